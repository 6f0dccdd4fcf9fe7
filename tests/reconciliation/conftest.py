"""Fixtures shared by the on-ramp, worker and admin tests (see tests/onramp/support.py)."""
from tests.onramp.support import crypto_wallet, onramp, run_jobs  # noqa: F401

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
