"""Fixtures shared by the on-ramp, worker and admin tests (see tests/onramp/support.py)."""
import pytest

from tests.conftest import write_around_triggers
from tests.onramp.support import crypto_wallet, onramp, run_jobs  # noqa: F401


@pytest.fixture
def corrupt(services):
    """corrupt(sql, **params): write around the service and the ledger's triggers, the way only a
    superuser with triggers switched off could (what reconciliation exists to catch)."""

    return lambda sql, **params: write_around_triggers(services.superuser_url, sql, **params)
