"""Fixtures shared by the on-ramp, worker and admin tests (see tests/onramp/support.py)."""
from tests.onramp.support import crypto_wallet, onramp, run_jobs  # noqa: F401
