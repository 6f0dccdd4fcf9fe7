"""The ledger service: balanced movements, checks after the lock, idempotent replays, caller-owned transactions."""
import threading
import time
import uuid
from decimal import Decimal

import psycopg2
import pytest
from sqlalchemy import select, text

from wallet_api.errors import Unprocessable
from wallet_api.extensions import db
from wallet_api.wallets import ledger
from wallet_api.wallets.ledger import CurrencyMismatch, InsufficientFunds, WalletNotFound
from wallet_api.wallets.models import LedgerTransaction, SystemAccount, Wallet

CLEARING = SystemAccount.MOONPAY_CLEARING
ADJUSTMENTS = SystemAccount.PLATFORM_ADJUSTMENTS


def key(wallet_id, action="credit", ref=None):
    return ledger.entry_key(source="test", reference=ref or uuid.uuid4().hex, wallet_id=wallet_id, action=action)


def test_credit_writes_a_balanced_pair_and_updates_only_the_user_wallet(app_ctx, make_wallet, books):
    wallet = make_wallet(currency="USD")
    result = ledger.credit(wallet_id=wallet, amount=Decimal("25.50"), idempotency_key=key(wallet), kind="deposit",
                           counter_account=CLEARING, reference="mp_1", metadata={"crypto_tx": "0xabc"})
    assert not result.replayed
    assert result.currency == "USD" and result.amount == Decimal("25.50") and result.kind == "deposit"
    user_leg = result.leg(wallet)
    assert user_leg.amount == Decimal("25.50") and user_leg.balance_after == Decimal("25.50")
    (system_leg,) = [leg for leg in result.entries if leg.wallet_id != wallet]
    assert system_leg.amount == Decimal("-25.50") and system_leg.balance_after is None
    assert books.balance(wallet) == Decimal("25.50") == books.entries_sum(wallet)
    assert books.system_balance(CLEARING, "USD") == Decimal("-25.50")
    assert books.system_row_balance(CLEARING, "USD") == 0  # never written: derived from entries
    assert ledger.derived_balance(wallet_id=system_leg.wallet_id) == Decimal("-25.50")
    tx = db.session.get(LedgerTransaction, result.transaction_id)
    assert tx.meta == {"crypto_tx": "0xabc"} and tx.reference == "mp_1"


def test_entry_keys_follow_source_reference_wallet_action(app_ctx, make_wallet):
    wallet = make_wallet()
    primary = ledger.entry_key(source="webhook", reference="moonpay_tx_1", wallet_id=wallet, action="credit")
    result = ledger.credit(wallet_id=wallet, amount=Decimal("1"), idempotency_key=primary, kind="deposit",
                           counter_account=CLEARING)
    counter_wallet = next(leg.wallet_id for leg in result.entries if leg.wallet_id != wallet)
    keys = set(db.session.execute(text("SELECT idempotency_key FROM ledger_entries")).scalars())
    assert keys == {primary, f"webhook:moonpay_tx_1:{counter_wallet}:debit"}
    assert db.session.get(LedgerTransaction, result.transaction_id).idempotency_key == primary


@pytest.mark.parametrize("bad_key", ["no-wallet-in-it", "test:ref:{other}:credit", "test:ref:{wallet}:debit",
                                     "{wallet}:credit", ":{wallet}:credit", "x" * 250 + ":{wallet}:credit"])
def test_a_key_not_naming_the_primary_entry_is_a_programming_error(app_ctx, make_wallet, bad_key):
    wallet = make_wallet()
    with pytest.raises(ValueError):
        ledger.credit(wallet_id=wallet, amount=Decimal("1"), kind="deposit",
                      idempotency_key=bad_key.format(wallet=wallet, other=uuid.uuid4()))


def test_missing_wallet_ids_or_an_unknown_counter_account_are_programming_errors(app_ctx, make_wallet):
    wallet = make_wallet()
    with pytest.raises(ValueError):
        ledger.credit(wallet_id=None, amount=Decimal("1"), idempotency_key=key(wallet), kind="deposit")
    with pytest.raises(ValueError):
        ledger.credit(wallet_id=wallet, amount=Decimal("1"), idempotency_key=key(wallet), kind="deposit",
                      counter_account="petty_cash")
    with pytest.raises(ValueError):
        ledger.transfer(from_wallet_id=wallet, to_wallet_id=None, amount=Decimal("1"),
                        idempotency_key=key(wallet, "debit"))


def test_debit_checks_funds_after_the_lock_and_writes_nothing_when_short(app_ctx, funded_wallet, books):
    wallet = funded_wallet("10.00")
    with pytest.raises(InsufficientFunds) as refused:
        ledger.debit(wallet_id=wallet, amount=Decimal("10.01"), idempotency_key=key(wallet, "debit"), kind="fee")
    assert refused.value.status_code == 422 and refused.value.error == "insufficient_funds"
    assert books.count("ledger_transactions") == 1
    result = ledger.debit(wallet_id=wallet, amount=Decimal("10.00"), idempotency_key=key(wallet, "debit"),
                          kind="fee")
    assert result.leg(wallet).balance_after == 0
    assert books.balance(wallet) == 0 == books.entries_sum(wallet)
    assert books.system_balance(ADJUSTMENTS, "USD") == Decimal("10.00")


def test_transfer_moves_between_two_user_wallets(app_ctx, funded_wallet, make_wallet, books):
    source, destination = funded_wallet("50.00"), make_wallet()
    result = ledger.transfer(from_wallet_id=source, to_wallet_id=destination, amount=Decimal("20.25"),
                             idempotency_key=key(source, "debit"), reference="rent")
    assert result.kind == "transfer" and result.reference == "rent"
    assert result.leg(source).amount == Decimal("-20.25") and result.leg(source).balance_after == Decimal("29.75")
    assert result.leg(destination).balance_after == Decimal("20.25")
    assert books.balance(source) == Decimal("29.75") and books.balance(destination) == Decimal("20.25")


def test_transfer_refuses_same_wallet_other_currency_missing_wallets_and_system_wallets(
        app_ctx, funded_wallet, make_wallet):
    usd, eur = funded_wallet("5.00"), make_wallet(currency="EUR")
    with pytest.raises(Unprocessable, match="same wallet"):
        ledger.transfer(from_wallet_id=usd, to_wallet_id=usd, amount=Decimal("1"), idempotency_key=key(usd, "debit"))
    with pytest.raises(CurrencyMismatch):
        ledger.transfer(from_wallet_id=usd, to_wallet_id=eur, amount=Decimal("1"), idempotency_key=key(usd, "debit"))
    missing = uuid.uuid4()
    with pytest.raises(WalletNotFound, match="Destination wallet"):
        ledger.transfer(from_wallet_id=usd, to_wallet_id=missing, amount=Decimal("1"),
                        idempotency_key=key(usd, "debit"))
    system = ledger.system_wallet_id(account=CLEARING, currency="USD")
    with pytest.raises(WalletNotFound):
        ledger.transfer(from_wallet_id=system, to_wallet_id=usd, amount=Decimal("1"),
                        idempotency_key=key(system, "debit"))
    with pytest.raises(WalletNotFound):
        ledger.credit(wallet_id=system, amount=Decimal("1"), idempotency_key=key(system), kind="deposit")


def test_a_transfer_from_someone_elses_wallet_is_as_if_the_wallet_did_not_exist(
        app_ctx, funded_wallet, make_wallet, make_user, books):
    owner, stranger = make_user(), make_user()
    source, destination = funded_wallet("5.00", user=owner), make_wallet()
    with pytest.raises(WalletNotFound, match="Source wallet"):
        ledger.transfer(from_wallet_id=source, to_wallet_id=destination, amount=Decimal("1"),
                        idempotency_key=key(source, "debit"), source_owner_id=stranger.id)
    moved = ledger.transfer(from_wallet_id=source, to_wallet_id=destination, amount=Decimal("1"),
                            idempotency_key=key(source, "debit"), source_owner_id=owner.id)
    assert not moved.replayed and books.balance(source) == Decimal("4.00")


@pytest.mark.parametrize("currency,amount", [("USD", "0.001"), ("BTC", "0.000000001"), ("USDC", "1.0000001"),
                                             ("SOL", "0.0000000001"), ("ETH", "0.0000000000000000001")])
def test_amounts_finer_than_the_currency_precision_are_refused(app_ctx, make_wallet, currency, amount):
    wallet = make_wallet(currency=currency)
    with pytest.raises(Unprocessable) as refused:
        ledger.credit(wallet_id=wallet, amount=Decimal(amount), idempotency_key=key(wallet), kind="deposit")
    assert refused.value.errors == {"json": {"amount": [refused.value.message]}}
    assert "precision" in refused.value.message


@pytest.mark.parametrize("amount", ["0", "-1", "1000000000000000.01", "NaN", "Infinity"])
def test_non_positive_huge_or_non_finite_amounts_are_refused(app_ctx, make_wallet, amount):
    wallet = make_wallet()
    with pytest.raises(Unprocessable):
        ledger.credit(wallet_id=wallet, amount=Decimal(amount), idempotency_key=key(wallet), kind="deposit")


def test_eighteen_decimals_of_a_large_eth_balance_stay_exact(app_ctx, make_wallet, books):
    # 10^14 ETH with 18 decimals has 33 digits: more than Python's default 28-digit context.
    wallet = make_wallet(currency="ETH")
    ledger.credit(wallet_id=wallet, amount=Decimal("999999999999999.999999999999999999"),
                  idempotency_key=key(wallet), kind="deposit")
    result = ledger.debit(wallet_id=wallet, amount=Decimal("0.000000000000000001"),
                          idempotency_key=key(wallet, "debit"), kind="fee")
    assert result.leg(wallet).balance_after == Decimal("999999999999999.999999999999999998")
    assert books.balance(wallet) == Decimal("999999999999999.999999999999999998")


def test_a_replayed_key_returns_the_first_result_and_moves_nothing(app_ctx, make_wallet, books):
    wallet = make_wallet()
    k = key(wallet)
    first = ledger.credit(wallet_id=wallet, amount=Decimal("7.00"), idempotency_key=k, kind="deposit")
    again = ledger.credit(wallet_id=wallet, amount=Decimal("7.00"), idempotency_key=k, kind="deposit")
    assert again.replayed and not first.replayed
    assert again.transaction_id == first.transaction_id
    assert [(leg.wallet_id, leg.amount) for leg in again.entries] == \
        [(leg.wallet_id, leg.amount) for leg in first.entries]
    assert books.balance(wallet) == Decimal("7.00")
    assert books.count("ledger_entries") == 2


def test_a_replay_is_answered_even_when_the_funds_are_gone_since(app_ctx, funded_wallet, make_wallet, books):
    source, destination = funded_wallet("10.00"), make_wallet()
    k = key(source, "debit")
    first = ledger.transfer(from_wallet_id=source, to_wallet_id=destination, amount=Decimal("10.00"), idempotency_key=k)
    again = ledger.transfer(from_wallet_id=source, to_wallet_id=destination, amount=Decimal("10.00"), idempotency_key=k)
    assert again.replayed and again.transaction_id == first.transaction_id
    assert books.balance(destination) == Decimal("10.00")


def test_commit_false_leaves_the_transaction_to_the_caller(app, make_wallet, books):
    wallet = make_wallet()
    with app.app_context():
        db.session.execute(text("SET LOCAL lock_timeout = '1234ms'"))
        ledger.credit(wallet_id=wallet, amount=Decimal("3.00"), idempotency_key=key(wallet), kind="deposit",
                      commit=False)
        assert books.balance(wallet) == 0  # another connection sees nothing yet
        assert db.session.execute(text("SELECT balance FROM wallets WHERE id = :w"), {"w": wallet}).scalar() == 3
        assert db.session.execute(text("SHOW lock_timeout")).scalar() == "1234ms"  # the caller's setting is back
        db.session.rollback()
    assert books.balance(wallet) == 0 and books.count("ledger_transactions") == 0
    with app.app_context():
        ledger.credit(wallet_id=wallet, amount=Decimal("3.00"), idempotency_key=key(wallet), kind="deposit",
                      commit=False)
        db.session.commit()
    assert books.balance(wallet) == Decimal("3.00")


def test_commit_false_puts_the_callers_lock_timeout_back_on_every_path(app, funded_wallet, make_wallet):
    wallet, other = funded_wallet("5.00"), make_wallet()
    with app.app_context():
        db.session.execute(text("SET LOCAL lock_timeout = '1234ms'"))
        k = key(other)
        ledger.credit(wallet_id=other, amount=Decimal("1.00"), idempotency_key=k, kind="deposit", commit=False)
        replay = ledger.credit(wallet_id=other, amount=Decimal("1.00"), idempotency_key=k, kind="deposit",
                               commit=False)
        assert replay.replayed
        assert db.session.execute(text("SHOW lock_timeout")).scalar() == "1234ms"
        with pytest.raises(InsufficientFunds):
            ledger.debit(wallet_id=wallet, amount=Decimal("9.00"), idempotency_key=key(wallet, "debit"),
                         kind="withdrawal", commit=False)
        assert db.session.execute(text("SHOW lock_timeout")).scalar() == "1234ms"
        db.session.rollback()


def test_commit_false_replay_and_refusal_keep_the_callers_transaction_usable(app, funded_wallet, books):
    wallet = funded_wallet("5.00")
    k = key(wallet, "debit")
    with app.app_context():
        ledger.debit(wallet_id=wallet, amount=Decimal("1.00"), idempotency_key=k, kind="fee")
    with app.app_context():
        db.session.execute(text("CREATE TEMP TABLE caller_work (n int) ON COMMIT DROP"))
        replay = ledger.debit(wallet_id=wallet, amount=Decimal("1.00"), idempotency_key=k, kind="fee", commit=False)
        assert replay.replayed
        with pytest.raises(InsufficientFunds):
            ledger.debit(wallet_id=wallet, amount=Decimal("100.00"), idempotency_key=key(wallet, "debit"),
                         kind="fee", commit=False)
        db.session.execute(text("INSERT INTO caller_work VALUES (1)"))  # the transaction is not aborted
        ledger.debit(wallet_id=wallet, amount=Decimal("2.00"), idempotency_key=key(wallet, "debit"), kind="fee",
                     commit=False)
        db.session.commit()
    assert books.balance(wallet) == Decimal("2.00") == books.entries_sum(wallet)


def test_the_unique_keys_are_the_backstop_even_inside_a_callers_transaction(app, settings, make_wallet, books):
    """Another writer inserts the same key without the wallet lock: our INSERT waits on the unique index,
    fails when it commits, and the caller's transaction survives (SAVEPOINT) with the existing result."""
    wallet = make_wallet()
    k = key(wallet)
    with app.app_context():
        clearing = ledger.system_wallet_id(account=CLEARING, currency="USD")
        adjustments = ledger.system_wallet_id(account=ADJUSTMENTS, currency="USD")
        db.session.commit()
    other = psycopg2.connect(settings.database_url)
    cur = other.cursor()
    cur.execute("""INSERT INTO ledger_transactions (id, kind, currency, amount, idempotency_key)
                   VALUES ('00000000-0000-0000-0000-000000000001', 'raw', 'USD', 1, %s)""", (k,))
    cur.execute("""INSERT INTO ledger_entries (transaction_id, wallet_id, currency, amount, idempotency_key)
                   VALUES ('00000000-0000-0000-0000-000000000001', %s, 'USD', -1, 'raw:1'),
                          ('00000000-0000-0000-0000-000000000001', %s, 'USD', 1, 'raw:2')""",
                (str(clearing), str(adjustments)))
    outcome = {}

    def credit_in_callers_transaction():
        with app.app_context():
            db.session.execute(text("CREATE TEMP TABLE caller_work (n int) ON COMMIT DROP"))
            outcome["result"] = ledger.credit(wallet_id=wallet, amount=Decimal("1.00"), idempotency_key=k,
                                              kind="deposit", commit=False)
            db.session.execute(text("INSERT INTO caller_work VALUES (1)"))  # not aborted
            db.session.commit()
            db.session.remove()

    worker = threading.Thread(target=credit_in_callers_transaction)
    worker.start()
    wait_until_blocked(settings, "ledger_write")  # the write, waiting on the unique key
    other.commit()
    other.close()
    worker.join(10)
    assert outcome["result"].replayed
    assert str(outcome["result"].transaction_id) == "00000000-0000-0000-0000-000000000001"
    assert books.balance(wallet) == 0 and books.count("ledger_transactions") == 1


def wait_until_blocked(settings, needle: str, timeout: float = 10.0) -> None:
    """Wait until some session of this database waits on a lock while running a query mentioning `needle`."""
    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(settings.database_url)
    conn.autocommit = True  # each poll needs a fresh view of pg_stat_activity (a transaction freezes it)
    try:
        cur = conn.cursor()
        while time.monotonic() < deadline:
            cur.execute("""SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                           AND wait_event_type = 'Lock' AND query ILIKE %s""", (f"%{needle}%",))
            if cur.fetchone()[0]:
                return
            time.sleep(0.02)
    finally:
        conn.close()
    raise AssertionError(f"nothing blocked on {needle}")


def test_missing_system_wallets_are_created_on_first_use(app, make_wallet, books, services):
    wallet = make_wallet(currency="SOL")
    owner = psycopg2.connect(services.owner_url)  # the application itself may not delete wallets
    with owner, owner.cursor() as cur:
        cur.execute("DELETE FROM wallets WHERE system_account IS NOT NULL AND currency = 'SOL'")
    owner.close()
    with app.app_context():
        result = ledger.credit(wallet_id=wallet, amount=Decimal("1.5"), idempotency_key=key(wallet),
                               kind="deposit", counter_account=CLEARING)
        counter = db.session.get(Wallet, next(leg.wallet_id for leg in result.entries if leg.wallet_id != wallet))
        assert (counter.system_account, counter.currency) == (CLEARING, "SOL")
    assert books.system_balance(CLEARING, "SOL") == Decimal("-1.5")


def test_cached_wallet_objects_are_refreshed_after_a_movement(app, make_wallet):
    wallet_id = make_wallet()
    with app.app_context():
        wallet = db.session.scalar(select(Wallet).where(Wallet.id == wallet_id))
        assert wallet.balance == 0
        ledger.credit(wallet_id=wallet_id, amount=Decimal("4.00"), idempotency_key=key(wallet_id), kind="deposit",
                      commit=False)
        assert wallet.balance == Decimal("4.00")
        db.session.rollback()


def test_every_operation_is_recorded_in_the_metrics(app_ctx, funded_wallet, monkeypatch):
    wallet = funded_wallet("1.00")
    recorded = []
    monkeypatch.setattr(ledger.metrics, "record_ledger_operation", lambda **kw: recorded.append(kw))
    k = key(wallet, "debit")
    ledger.debit(wallet_id=wallet, amount=Decimal("1.00"), idempotency_key=k, kind="fee")
    ledger.debit(wallet_id=wallet, amount=Decimal("1.00"), idempotency_key=k, kind="fee")
    with pytest.raises(InsufficientFunds):
        ledger.debit(wallet_id=wallet, amount=Decimal("1.00"), idempotency_key=key(wallet, "debit"), kind="fee")
    assert [(r["operation"], r["success"], r["replayed"], r["currency"], r["error"]) for r in recorded] == [
        ("debit", True, False, "USD", None), ("debit", True, True, "USD", None),
        ("debit", False, False, None, "insufficient_funds")]
    assert all(r["amount"] == Decimal("1.00") and r["duration_s"] >= 0 for r in recorded)


def test_one_reference_for_two_wallets_collides_on_the_counter_key_and_moves_nothing(app_ctx, make_wallet, books):
    first, second = make_wallet(), make_wallet()
    ledger.credit(wallet_id=first, amount=Decimal("1"), kind="deposit",
                  idempotency_key=ledger.entry_key(source="t", reference="same", wallet_id=first, action="credit"))
    with pytest.raises(ledger.IdempotencyKeyCollision) as collision:
        ledger.credit(wallet_id=second, amount=Decimal("1"), kind="deposit",
                      idempotency_key=ledger.entry_key(source="t", reference="same", wallet_id=second,
                                                       action="credit"))
    assert collision.value.status_code == 409
    assert books.balance(second) == 0 and books.count("ledger_transactions") == 1
