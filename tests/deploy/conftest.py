"""The on-ramp fixtures (tests/onramp/support.py): deployment tests run real webhooks and workers."""
from tests.onramp.support import crypto_wallet, onramp, run_jobs  # noqa: F401
