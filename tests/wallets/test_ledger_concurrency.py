"""Many real connections at once: no lost update, no deadlock, no double spend, no hot system row."""
import random
import threading
import time
import uuid
from decimal import Decimal

import psycopg2
import pytest
from sqlalchemy import text

from tests.wallets.conftest import run_concurrently
from tests.wallets.test_ledger import wait_until_blocked
from wallet_api.extensions import db
from wallet_api.wallets import ledger
from wallet_api.wallets.ledger import InsufficientFunds, LedgerBusy
from wallet_api.wallets.models import SystemAccount

pytestmark = pytest.mark.slow


def key(wallet_id, action="credit"):
    return ledger.entry_key(source="test", reference=uuid.uuid4().hex, wallet_id=wallet_id, action=action)


@pytest.fixture
def short_lock_app(make_settings_app):
    """An app whose ledger gives up waiting for a wallet lock after 200 ms."""
    app = make_settings_app(ledger_lock_timeout_ms=200)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def assert_balance_after_chain(app, wallet_id):
    """Entries in id order: each balance_after is the previous one plus its amount (ids are commit order)."""
    with app.app_context():
        rows = db.session.execute(text("SELECT amount, balance_after FROM ledger_entries WHERE wallet_id = :w "
                                       "ORDER BY id"), {"w": wallet_id}).all()
        db.session.remove()
    running = Decimal(0)
    for amount, balance_after in rows:
        running += amount
        assert balance_after == running
    return running


def test_200_concurrent_credits_and_debits_on_one_wallet_lose_nothing(app, funded_wallet, books):
    wallet = funded_wallet("100.00")
    jobs = []
    for i in range(200):
        if i % 2:
            jobs.append(lambda: ledger.debit(wallet_id=wallet, amount=Decimal("0.75"), kind="fee",
                                             idempotency_key=key(wallet, "debit")))
        else:
            jobs.append(lambda: ledger.credit(wallet_id=wallet, amount=Decimal("1.25"), kind="deposit",
                                              counter_account=SystemAccount.MOONPAY_CLEARING,
                                              idempotency_key=key(wallet)))
    outcomes = run_concurrently(app, jobs, workers=20)
    assert [exc for _, exc in outcomes if exc] == []
    expected = Decimal("100.00") + 100 * Decimal("1.25") - 100 * Decimal("0.75")
    assert books.balance(wallet) == expected == books.entries_sum(wallet)
    assert assert_balance_after_chain(app, wallet) == expected
    assert books.count("ledger_transactions") == 201 and books.unbalanced_transactions() == 0


def test_1000_random_transfers_among_10_wallets_from_16_workers(app, funded_wallet, books):
    wallets = [funded_wallet("100.00") for _ in range(10)]
    rng = random.Random(1234)
    plans = []
    for _ in range(1000):
        source, destination = rng.sample(wallets, 2)
        plans.append((source, destination, Decimal(rng.randint(1, 4000)) / 100))
    jobs = [lambda s=s, d=d, a=a: ledger.transfer(from_wallet_id=s, to_wallet_id=d, amount=a,
                                                  idempotency_key=key(s, "debit"))
            for s, d, a in plans]
    started = time.monotonic()
    outcomes = run_concurrently(app, jobs, workers=16)
    elapsed = time.monotonic() - started
    unexpected = [exc for _, exc in outcomes if exc and not isinstance(exc, InsufficientFunds)]
    assert unexpected == []  # no deadlock (40P01), no lock timeout, no constraint violation
    succeeded = sum(1 for result, _ in outcomes if result is not None)
    assert succeeded > 500, "the scenario should mostly succeed"
    assert books.count("ledger_transactions") == 10 + succeeded
    assert books.total("USD") == 0  # user wallets plus the clearing wallet
    balances = [books.balance(w) for w in wallets]
    assert sum(balances) == Decimal("1000.00")
    assert min(balances) >= 0
    assert books.drifted_wallets() == 0 and books.unbalanced_transactions() == 0
    for wallet in wallets:
        assert_balance_after_chain(app, wallet)
    assert elapsed < 60


def test_50_concurrent_calls_with_one_ledger_key_move_money_once(app, make_wallet, books, monkeypatch):
    wallet = make_wallet()
    k = key(wallet)
    backstop_used = []
    original = ledger._replay_after_conflict
    monkeypatch.setattr(ledger, "_replay_after_conflict", lambda *a: backstop_used.append(1) or original(*a))
    jobs = [lambda: ledger.credit(wallet_id=wallet, amount=Decimal("10.00"), kind="deposit", idempotency_key=k,
                                  counter_account=SystemAccount.MOONPAY_CLEARING)] * 50
    outcomes = run_concurrently(app, jobs, workers=25)
    assert [exc for _, exc in outcomes if exc] == []
    # The duplicates queued on the wallet lock and found the key after it: the unique constraint never had to.
    assert backstop_used == []
    results = [result for result, _ in outcomes]
    assert len({r.transaction_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert books.balance(wallet) == Decimal("10.00") == books.entries_sum(wallet)
    assert books.count("ledger_transactions") == 1


def test_50_concurrent_transfers_with_one_key_move_money_once(app, funded_wallet, books):
    a, b = funded_wallet("100.00"), funded_wallet("100.00")
    k = key(a, "debit")
    jobs = [lambda: ledger.transfer(from_wallet_id=a, to_wallet_id=b, amount=Decimal("60.00"), idempotency_key=k)] * 50
    outcomes = run_concurrently(app, jobs, workers=25)
    assert [exc for _, exc in outcomes if exc] == []
    assert sum(not r.replayed for r, _ in outcomes) == 1
    assert books.balance(a) == Decimal("40.00") and books.balance(b) == Decimal("160.00")


def test_a_held_wallet_lock_times_out_cleanly_and_writes_nothing(short_lock_app, settings, funded_wallet, books):
    wallet = funded_wallet("10.00")
    holder = psycopg2.connect(settings.database_url)
    holder.cursor().execute("SELECT 1 FROM wallets WHERE id = %s FOR UPDATE", (str(wallet),))
    try:
        with short_lock_app.app_context():
            started = time.monotonic()
            with pytest.raises(LedgerBusy) as busy:
                ledger.debit(wallet_id=wallet, amount=Decimal("1.00"), idempotency_key=key(wallet, "debit"),
                             kind="fee")
            waited = time.monotonic() - started
            assert busy.value.status_code == 503 and busy.value.error == "resource_busy"
            assert busy.value.headers == {"Retry-After": "1"}
            assert 0.15 < waited < 3
            # The session is clean again: the next operation works once the lock is gone.
            holder.rollback()
            ledger.debit(wallet_id=wallet, amount=Decimal("1.00"), idempotency_key=key(wallet, "debit"), kind="fee")
    finally:
        holder.close()
    assert books.balance(wallet) == Decimal("9.00") and books.count("ledger_transactions") == 2


def test_an_open_credit_does_not_block_credits_to_other_wallets_from_the_same_clearing_wallet(
        short_lock_app, settings, make_wallet, books):
    """No hot row: the clearing wallet is never locked FOR UPDATE nor updated, so credits don't queue on it."""
    first, second = make_wallet(), make_wallet()
    opened, release = threading.Event(), threading.Event()

    def credit_and_keep_the_transaction_open():
        with short_lock_app.app_context():
            ledger.credit(wallet_id=first, amount=Decimal("1.00"), idempotency_key=key(first), kind="deposit",
                          counter_account=SystemAccount.MOONPAY_CLEARING, commit=False)
            opened.set()
            release.wait(10)
            db.session.commit()
            db.session.remove()

    holder = threading.Thread(target=credit_and_keep_the_transaction_open)
    holder.start()
    try:
        assert opened.wait(10)
        with short_lock_app.app_context():
            started = time.monotonic()
            for _ in range(5):  # each would time out after 200 ms if the clearing row were locked
                ledger.credit(wallet_id=second, amount=Decimal("1.00"), idempotency_key=key(second),
                              kind="deposit", counter_account=SystemAccount.MOONPAY_CLEARING)
            assert time.monotonic() - started < 2
    finally:
        release.set()
        holder.join(10)
    assert books.balance(first) == Decimal("1.00") and books.balance(second) == Decimal("5.00")
    assert books.system_balance(SystemAccount.MOONPAY_CLEARING, "USD") == Decimal("-6.00")


def test_a_debit_waits_for_a_concurrent_credit_then_sees_its_money(app, settings, make_wallet, books):
    """Funds are checked after the lock: a debit queued behind a credit spends the credited money."""
    wallet = make_wallet()
    holder = psycopg2.connect(settings.database_url)
    holder.cursor().execute("SELECT 1 FROM wallets WHERE id = %s FOR UPDATE", (str(wallet),))
    outcome = {}

    def debit():
        with app.app_context():
            try:
                outcome["result"] = ledger.debit(wallet_id=wallet, amount=Decimal("5.00"), kind="fee",
                                                 idempotency_key=key(wallet, "debit"))
            except Exception as exc:  # asserted below
                outcome["error"] = exc
            db.session.remove()

    worker = threading.Thread(target=debit)
    worker.start()
    wait_until_blocked(settings, "EXECUTE ledger_lock")
    # While the debit waits, money arrives (committed by the lock holder's connection, as the ledger would).
    cur = holder.cursor()
    cur.execute("SELECT id FROM wallets WHERE system_account = 'moonpay_clearing' AND currency = 'USD'")
    clearing = cur.fetchone()[0]
    cur.execute("""INSERT INTO ledger_transactions (id, kind, currency, amount, idempotency_key)
                   VALUES ('00000000-0000-0000-0000-0000000000aa', 'deposit', 'USD', 5, 'raw-credit')""")
    cur.execute("""INSERT INTO ledger_entries (transaction_id, wallet_id, currency, amount, balance_after,
                                               idempotency_key)
                   VALUES ('00000000-0000-0000-0000-0000000000aa', %s, 'USD', 5, 5, 'raw-credit:1'),
                          ('00000000-0000-0000-0000-0000000000aa', %s, 'USD', -5, NULL, 'raw-credit:2')""",
                (str(wallet), clearing))
    cur.execute("UPDATE wallets SET balance = 5 WHERE id = %s", (str(wallet),))
    holder.commit()
    holder.close()
    worker.join(10)
    assert "error" not in outcome, outcome
    assert outcome["result"].leg(wallet).balance_after == 0
    assert books.balance(wallet) == 0 == books.entries_sum(wallet)
