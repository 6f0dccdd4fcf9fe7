"""Fixtures shared with the on-ramp and worker tests (see tests/onramp/support.py)."""
from tests.onramp.support import crypto_wallet, onramp, run_jobs  # noqa: F401
