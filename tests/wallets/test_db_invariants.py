"""The database itself refuses bad ledger writes, whatever code (or person with psql) attempts them.

These run as the schema's owner: the triggers and constraints hold even for the role that owns
the tables. The application's own role is refused earlier still, by missing privileges
(tests/app/test_database_roles.py)."""
import uuid

import psycopg2
import pytest
from psycopg2 import errors


@pytest.fixture
def raw(services):
    """A plain psycopg2 connection as the owner: no service code between the test and PostgreSQL."""
    conn = psycopg2.connect(services.owner_url)
    yield conn
    conn.rollback()
    conn.close()


@pytest.fixture
def ledger_rows(raw, funded_wallet):
    """(wallet id, clearing wallet id, one committed transaction id) after a 10.00 deposit."""
    wallet = funded_wallet("10.00")
    cur = raw.cursor()
    cur.execute("SELECT id FROM wallets WHERE system_account = 'moonpay_clearing' AND currency = 'USD'")
    clearing = cur.fetchone()[0]
    cur.execute("SELECT id FROM ledger_transactions")
    tx = cur.fetchone()[0]
    raw.commit()
    return str(wallet), clearing, tx


def insert_transaction(cur, legs, currency="USD"):
    tx = str(uuid.uuid4())
    cur.execute("INSERT INTO ledger_transactions (id, kind, currency, amount, idempotency_key) "
                "VALUES (%s, 'raw', %s, 1, %s)", (tx, currency, "raw:" + tx))
    for wallet, amount in legs:
        cur.execute("INSERT INTO ledger_entries (transaction_id, wallet_id, currency, amount, idempotency_key) "
                    "VALUES (%s, %s, %s, %s, %s)", (tx, wallet, currency, amount, "raw:" + str(uuid.uuid4())))
    return tx


def test_an_unbalanced_transaction_is_refused_at_commit(raw, ledger_rows):
    wallet, clearing, _ = ledger_rows
    cur = raw.cursor()
    insert_transaction(cur, [(clearing, "-5.00"), (wallet, "4.99")])  # each INSERT is accepted...
    with pytest.raises(errors.CheckViolation, match="unbalanced"):
        raw.commit()  # ...the deferred trigger refuses the transaction as a whole


def test_a_single_legged_transaction_is_refused(raw, ledger_rows):
    _, clearing, _ = ledger_rows
    insert_transaction(raw.cursor(), [(clearing, "-5.00")])
    with pytest.raises(errors.CheckViolation, match="at least 2"):
        raw.commit()


def test_a_transaction_without_entries_is_refused(raw):
    raw.cursor().execute("INSERT INTO ledger_transactions (id, kind, currency, amount, idempotency_key) "
                         "VALUES (gen_random_uuid(), 'raw', 'USD', 1, 'raw-empty')")
    with pytest.raises(errors.CheckViolation):
        raw.commit()


def test_a_balanced_raw_transaction_is_accepted(raw, ledger_rows):
    _, clearing, _ = ledger_rows
    cur = raw.cursor()
    cur.execute("SELECT id FROM wallets WHERE system_account = 'platform_adjustments' AND currency = 'USD'")
    insert_transaction(cur, [(clearing, "-5.00"), (cur.fetchone()[0], "5.00")])
    raw.commit()


@pytest.mark.parametrize("statement", [
    "UPDATE ledger_entries SET amount = amount * 2",
    "UPDATE ledger_entries SET balance_after = 0",
    "DELETE FROM ledger_entries",
    "UPDATE ledger_transactions SET amount = 1000",
    "DELETE FROM ledger_transactions",
    "TRUNCATE ledger_entries CASCADE",
    "TRUNCATE ledger_transactions CASCADE",
])
def test_ledger_rows_are_append_only(raw, ledger_rows, statement):
    with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        raw.cursor().execute(statement)


def test_an_entry_cannot_be_in_another_currency_than_its_wallet(raw, ledger_rows):
    wallet, _, _ = ledger_rows
    cur = raw.cursor()
    cur.execute("SELECT id FROM wallets WHERE system_account = 'moonpay_clearing' AND currency = 'EUR'")
    with pytest.raises(errors.ForeignKeyViolation):
        insert_transaction(cur, [(cur.fetchone()[0], "-1.00"), (wallet, "1.00")], currency="EUR")


def test_a_user_wallet_cannot_go_below_zero(raw, ledger_rows):
    wallet, _, _ = ledger_rows
    with pytest.raises(errors.CheckViolation, match="user_balance_non_negative"):
        raw.cursor().execute("UPDATE wallets SET balance = -0.000000000000000001 WHERE id = %s", (wallet,))


def test_a_system_wallet_may_go_negative_and_keeps_no_cached_balance(raw, ledger_rows):
    cur = raw.cursor()
    cur.execute("""SELECT w.balance, sum(e.amount) FROM wallets w JOIN ledger_entries e ON e.wallet_id = w.id
                   WHERE w.system_account = 'moonpay_clearing' AND w.currency = 'USD' GROUP BY w.balance""")
    assert cur.fetchone() == (0, -10)


def test_a_zero_entry_and_a_duplicate_key_are_refused(raw, ledger_rows):
    wallet, clearing, _ = ledger_rows
    cur = raw.cursor()
    with pytest.raises(errors.CheckViolation):
        insert_transaction(cur, [(clearing, "0"), (wallet, "0")])
    raw.rollback()
    cur.execute("SELECT idempotency_key FROM ledger_entries LIMIT 1")
    existing = cur.fetchone()[0]
    cur.execute("SELECT transaction_id FROM ledger_entries LIMIT 1")
    with pytest.raises(errors.UniqueViolation):
        cur.execute("INSERT INTO ledger_entries (transaction_id, wallet_id, currency, amount, idempotency_key) "
                    "VALUES (%s, %s, 'USD', 1, %s)", (cur.fetchone()[0], wallet, existing))
