"""Fixtures shared by the on-ramp, worker and admin tests (see tests/onramp/support.py)."""
from tests.onramp.support import books, crypto_wallet, db_read, onramp, run_jobs  # noqa: F401
