"""Fixtures shared by the on-ramp, worker and admin tests (see tests/onramp/support.py)."""
from tests.onramp.support import books, crypto_wallet, db_read, onramp, run_jobs  # noqa: F401

import psycopg2
import pytest


@pytest.fixture
def corrupt(services):
    """corrupt(sql, **params): write around the service and the ledger's triggers, the way only a
    superuser with triggers switched off could (what reconciliation exists to catch)."""

    def run(sql: str, **params):
        conn = psycopg2.connect(services.superuser_url)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SET LOCAL session_replication_role = replica")
                cur.execute(sql, params)
        finally:
            conn.close()

    return run


@pytest.fixture
def fund(app):
    """fund(wallet_id, "10.00") credits a wallet through the ledger (from the MoonPay clearing wallet)."""
    import uuid
    from decimal import Decimal

    from wallet_api.wallets import ledger
    from wallet_api.wallets.models import SystemAccount

    def credit(wallet_id, amount, *, kind="deposit", reference=None):
        from wallet_api.extensions import db

        with app.app_context():
            result = ledger.credit(
                wallet_id=wallet_id, amount=Decimal(amount), kind=kind, reference=reference,
                counter_account=SystemAccount.MOONPAY_CLEARING,
                idempotency_key=ledger.entry_key(source="test", reference=uuid.uuid4().hex, wallet_id=wallet_id,
                                                 action="credit"))
            db.session.remove()
            return result

    return credit
