"""The world the fuzzer works in: an app with every rate limit raised, and one of everything, owned by
a user, by another user and by nobody in particular (alerts, dead letters, job runs)."""
from __future__ import annotations

from dataclasses import dataclass, field
import uuid
from decimal import Decimal

import pytest

from tests.conftest import FACTORY_PASSWORD
from tests.onramp.support import crypto_wallet, moonpay_event, onramp, park_in_dlq  # noqa: F401
from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import raise_alert
from wallet_api.config import RateLimits
from wallet_api.extensions import db
from wallet_api.jobs.catalog import PERIODIC_JOBS
from wallet_api.jobs.runner import run_job
from wallet_api.wallets import service as wallets

# Far above anything a bounded run sends, so the fuzzer meets the routes rather than 429s; the limits
# themselves stay on (their keys and headers run on every request).
RAISED = "100000/minute"


@pytest.fixture
def fuzz_app(make_settings_app):
    return make_settings_app(ratelimit_enabled=True,
                             rate_limits=RateLimits(**{name: RAISED for name in RateLimits.__dataclass_fields__}))


@dataclass
class World:
    tokens: dict[str, dict[str, str]]                          # persona -> {"access": ..., "refresh": ...}
    ids: dict[str, list[str]] = field(default_factory=dict)       # path parameter name -> real values
    body_ids: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # persona -> body field -> ids

    def headers(self, persona: str, *, refresh: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[persona]['refresh' if refresh else 'access']}"}


@pytest.fixture
def world(app, fuzz_app, make_user, funded_wallet, onramp):  # noqa: F811
    """Tokens for `user` and `admin`, and real ids of their own resources and of another user's."""
    user, other, admin = make_user(), make_user(), make_user(role="ADMIN")
    client = fuzz_app.test_client()
    tokens = {}
    for name, person in (("user", user), ("admin", admin)):
        pair = client.post("/auth/login", json={"email": person.email, "password": FACTORY_PASSWORD}).get_json()
        tokens[name] = {"access": pair["access_token"], "refresh": pair["refresh_token"]}
    own_usd, others_usd = funded_wallet("1000.00", user=user), funded_wallet("1000.00", user=other)
    own_tx, own_eth = onramp(user, "ETH")
    others_tx, others_eth = onramp(other, "ETH")
    admin_usd = funded_wallet("1000.00", user=admin)
    transfers = []
    for source, destination, owner in ((own_usd, others_usd, user), (others_usd, own_usd, other)):
        with app.app_context():
            transfers.append(wallets.create_transfer(user_id=owner.id, from_wallet_id=source,
                                                     to_wallet_id=destination, amount=Decimal("1.00")).id)
            db.session.remove()
    with app.app_context():
        alert_id = raise_alert(alert_type=AlertType.JOB_CRASH, subject="job:fuzz", title="t", message="m")
        db.session.commit()
        run_id = run_job("webhook-retry", lambda: {})["run_id"]
        db.session.remove()
    entry = park_in_dlq(app, client, moonpay_event(onramp_id=uuid.uuid4(), user_id=other.id, moonpay_id="mp_fuzz"))
    ids = {"wallet_id": [own_usd, own_eth, others_usd, others_eth, admin_usd],
           "transfer_id": transfers, "transaction_id": [own_tx, others_tx], "entry_id": [entry],
           "alert_id": [alert_id], "run_id": [run_id], "name": [job.name for job in PERIODIC_JOBS]}
    # Body fields naming wallets, per persona, each with the ids most likely to get past validation first.
    body_ids = {"user": {"from_wallet_id": [own_usd, others_usd], "to_wallet_id": [others_usd, own_usd],
                         "wallet_id": [own_eth, others_eth, own_usd]},
                "admin": {"from_wallet_id": [admin_usd, own_usd], "to_wallet_id": [own_usd, admin_usd],
                          "wallet_id": [own_eth, admin_usd]}}
    return World(tokens=tokens, ids={k: [str(v) for v in vs] for k, vs in ids.items()},
                 body_ids={persona: {k: [str(v) for v in vs] for k, vs in fields.items()}
                           for persona, fields in body_ids.items()})

