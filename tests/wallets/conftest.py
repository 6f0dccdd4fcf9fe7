"""Factories for wallet tests: wallets, funded wallets, ledger sums, concurrent runners."""
from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from sqlalchemy import text

from wallet_api.extensions import db
from wallet_api.wallets import ledger, service
from wallet_api.wallets.models import SystemAccount


@pytest.fixture
def make_wallet(app, make_user):
    """make_wallet(user=None, currency="USD") -> wallet id (a new user when none is given)."""

    def make(user=None, currency: str = "USD") -> uuid.UUID:
        owner = user or make_user()
        with app.app_context():
            return service.create_wallet(user_id=owner.id, currency=currency).id

    return make


@pytest.fixture
def fund(app):
    """fund(wallet_id, "100.00") credits from the MoonPay clearing wallet; returns the LedgerResult."""

    def credit(wallet_id: uuid.UUID, amount: str | Decimal, *, key: str | None = None):
        with app.app_context():
            return ledger.credit(
                wallet_id=wallet_id, amount=Decimal(amount), kind="deposit",
                counter_account=SystemAccount.MOONPAY_CLEARING,
                idempotency_key=key or ledger.entry_key(source="test", reference=uuid.uuid4().hex,
                                                        wallet_id=wallet_id, action="credit"))

    return credit


@pytest.fixture
def funded_wallet(make_wallet, fund):
    """funded_wallet("100.00", user=None, currency="USD") -> wallet id holding that balance."""

    def make(amount: str = "100.00", *, user=None, currency: str = "USD") -> uuid.UUID:
        wallet_id = make_wallet(user, currency)
        fund(wallet_id, amount)
        return wallet_id

    return make


@pytest.fixture
def books(app):
    """Read-only views of the ledger used by assertions."""
    return Books(app)


class Books:
    def __init__(self, app):
        self.app = app

    def _scalar(self, sql: str, **params):
        with self.app.app_context():
            try:
                return db.session.execute(text(sql), params).scalar()
            finally:
                db.session.remove()

    def balance(self, wallet_id) -> Decimal:
        """The cached balance column."""
        return self._scalar("SELECT balance FROM wallets WHERE id = :w", w=wallet_id)

    def entries_sum(self, wallet_id) -> Decimal:
        return self._scalar("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE wallet_id = :w", w=wallet_id)

    def system_balance(self, account: str, currency: str) -> Decimal:
        return self._scalar("""SELECT coalesce(sum(e.amount), 0)
                               FROM ledger_entries e JOIN wallets w ON w.id = e.wallet_id
                               WHERE w.system_account = :a AND w.currency = :c""", a=account, c=currency)

    def system_row_balance(self, account: str, currency: str) -> Decimal:
        return self._scalar("SELECT balance FROM wallets WHERE system_account = :a AND currency = :c",
                            a=account, c=currency)

    def count(self, table: str) -> int:
        return self._scalar(f"SELECT count(*) FROM {table}")

    def unbalanced_transactions(self) -> int:
        return self._scalar("""SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries
                               GROUP BY transaction_id, currency HAVING sum(amount) <> 0) t""")

    def drifted_wallets(self) -> int:
        """User wallets whose cached balance differs from SUM(entries)."""
        return self._scalar("""SELECT count(*) FROM wallets w WHERE w.user_id IS NOT NULL AND w.balance <>
                               (SELECT coalesce(sum(amount), 0) FROM ledger_entries e WHERE e.wallet_id = w.id)""")

    def total(self, currency: str) -> Decimal:
        return self._scalar("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE currency = :c", c=currency)


def run_concurrently(app, jobs, *, workers: int):
    """Run callables on `workers` threads, each in its own app context (own session and connection).

    Returns [(result | None, exception | None)] in job order. A barrier makes the first wave start together.
    """
    barrier = threading.Barrier(min(workers, len(jobs)))

    def run(index_job):
        index, job = index_job
        with app.app_context():
            try:
                if index < barrier.parties:
                    barrier.wait(timeout=30)
                return job(), None
            except Exception as exc:  # collected and asserted on by the test
                return None, exc
            finally:
                db.session.remove()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, enumerate(jobs)))
