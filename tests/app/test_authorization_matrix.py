"""The authorization matrix: every operation of the app's own OpenAPI document, called as anonymous,
as the USER who owns the target, as another USER who owns nothing of it, and as an ADMIN, gets
exactly the status listed here. A route added without an entry here fails this test."""
import time
import uuid

import pytest

from tests.conftest import FACTORY_PASSWORD
from tests.onramp.support import dead_letter, moonpay_event, signature_for, to_json
from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import raise_alert
from wallet_api.extensions import db
from wallet_api.jobs.runner import run_job

PERSONAS = ("anonymous", "other", "user", "admin")
OWNER_ONLY = {"anonymous": 401, "other": 404, "user": None, "admin": 404}   # None: the success status
ANY_USER = {"anonymous": 401, "other": None, "user": None, "admin": None}
ADMIN_ONLY = {"anonymous": 401, "other": 403, "user": 403, "admin": None}
PUBLIC = {"anonymous": None, "other": None, "user": None, "admin": None}

MATRIX = {
    "GET /health": (PUBLIC, 200),
    "GET /ready": (PUBLIC, 200),
    "POST /auth/register": (PUBLIC, 201),
    "POST /auth/login": (PUBLIC, 200),
    "POST /auth/refresh": ({**ANY_USER}, 200),
    "POST /auth/logout": ({**ANY_USER}, 204),
    "GET /auth/me": (ANY_USER, 200),
    "GET /wallets": (ANY_USER, 200),
    "POST /wallets": (ANY_USER, 201),
    "GET /wallets/{wallet_id}": (OWNER_ONLY, 200),
    "GET /wallets/{wallet_id}/ledger": (OWNER_ONLY, 200),
    "POST /transfers": (OWNER_ONLY, 201),
    "GET /transfers/{transfer_id}": (OWNER_ONLY, 200),
    "POST /onramp/sessions": (OWNER_ONLY, 201),
    "GET /onramp/transactions": (ANY_USER, 200),
    "GET /onramp/transactions/{transaction_id}": (OWNER_ONLY, 200),
    "POST /webhooks/moonpay": (PUBLIC, 200),
    "GET /admin/dlq": (ADMIN_ONLY, 200),
    "POST /admin/dlq/{entry_id}/resolve": (ADMIN_ONLY, 200),
    "GET /admin/alerts/unresolved": (ADMIN_ONLY, 200),
    "GET /admin/alerts/{alert_id}": (ADMIN_ONLY, 200),
    "POST /admin/alerts/{alert_id}/resolve": (ADMIN_ONLY, 200),
    "GET /admin/jobs": (ADMIN_ONLY, 200),
    "POST /admin/jobs/{name}/run": (ADMIN_ONLY, 202),
    "GET /admin/jobs/{name}/runs": (ADMIN_ONLY, 200),
    "GET /admin/jobs/runs/{run_id}": (ADMIN_ONLY, 200),
    "GET /admin/wallets": (ADMIN_ONLY, 200),
    "GET /admin/access-log": (ADMIN_ONLY, 200),
    "POST /admin/wallets/{wallet_id}/credit": (ADMIN_ONLY, 201),
    "POST /admin/wallets/{wallet_id}/debit": (ADMIN_ONLY, 201),
}


@pytest.fixture
def world(app, client, make_user, funded_wallet, make_wallet, onramp):
    """Users with tokens, and one of everything owned by `user`."""
    people = {"user": make_user(), "other": make_user(), "admin": make_user(role="ADMIN")}
    tokens = {}
    for name, person in people.items():
        answer = client.post("/auth/login", json={"email": person.email, "password": FACTORY_PASSWORD}).get_json()
        tokens[name] = answer
    wallet = funded_wallet("100.00", user=people["user"])
    third_party = make_wallet(make_user())
    transfer = client.post("/transfers", headers=_bearer(tokens["user"]["access_token"]),
                           json={"from_wallet_id": str(wallet), "to_wallet_id": str(third_party),
                                 "amount": "1.00"}).get_json()["id"]
    onramp_id, crypto_wallet = onramp(people["user"], "ETH")
    with app.app_context():
        alert = raise_alert(alert_type=AlertType.JOB_CRASH, subject="job:matrix", title="t", message="m")
        db.session.commit()
        run_id = run_job("webhook-retry", lambda: {})["run_id"]
        db.session.remove()
    return dict(people=people, tokens=tokens, wallet=wallet, third_party=third_party, transfer=transfer,
                onramp=onramp_id, crypto_wallet=crypto_wallet, alert=alert, run_id=run_id,
                dlq_entry=dead_letter(app, client, people["user"], moonpay_id="mp_matrix"))


def _bearer(token):
    return {"Authorization": f"Bearer {token}"} if token else {}


def _call(client, world, operation: str, persona: str):
    """Make the operation's request as the persona, with valid arguments."""
    method, path = operation.split(" ", 1)
    tokens = world["tokens"].get(persona, {})
    access = tokens.get("access_token")
    headers = _bearer(access)
    ids = {"wallet_id": world["wallet"], "transfer_id": world["transfer"], "transaction_id": world["onramp"],
           "entry_id": world["dlq_entry"], "alert_id": world["alert"], "name": "webhook-retry",
           "run_id": world["run_id"]}
    url = path.format(**{k: v for k, v in ids.items() if "{" + k + "}" in path})
    body = None
    if operation == "POST /auth/register":
        body = {"email": f"new-{uuid.uuid4().hex[:8]}@example.com", "password": "a long passphrase"}
    elif operation == "POST /auth/login":
        person = world["people"].get(persona, world["people"]["user"])
        body = {"email": person.email, "password": FACTORY_PASSWORD}
        headers = {}
    elif operation in ("POST /auth/refresh", "POST /auth/logout"):
        headers = _bearer(tokens.get("refresh_token"))
    elif operation == "POST /wallets":
        body = {"currency": "GBP"}
    elif operation == "POST /transfers":
        body = {"from_wallet_id": str(world["wallet"]), "to_wallet_id": str(world["third_party"]), "amount": "1.00"}
    elif operation == "POST /onramp/sessions":
        body = {"wallet_id": str(world["crypto_wallet"]), "base_currency": "usd", "base_amount": "50.00"}
    elif operation == "POST /admin/dlq/{entry_id}/resolve":
        body = {"note": "matrix", "action": "discard"}
    elif operation == "POST /admin/alerts/{alert_id}/resolve":
        body = {"note": "matrix"}
    elif operation in ("POST /admin/wallets/{wallet_id}/credit", "POST /admin/wallets/{wallet_id}/debit"):
        body = {"amount": "1.00", "reason": "matrix"}
    elif operation == "POST /webhooks/moonpay":
        raw = to_json(moonpay_event(onramp_id=world["onramp"], user_id=world["people"]["user"].id,
                                    moonpay_id=f"mp_{persona}", status="pending"))
        return client.post(url, data=raw, content_type="application/json",
                           headers={**headers, "Moonpay-Signature-V2": signature_for(raw, t=int(time.time()))})
    return client.open(url, method=method, json=body, headers=headers)


def test_every_operation_answers_each_persona_as_the_matrix_says(app, client, world):
    spec = client.get("/openapi.json").get_json()
    operations = [f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops
                  if method in ("get", "post", "put", "patch", "delete")]
    missing = sorted(set(operations) - set(MATRIX))
    assert not missing, f"operations without an authorization entry: {missing}"
    assert not sorted(set(MATRIX) - set(operations)), "matrix entries for operations that no longer exist"
    failures = []
    for operation in operations:
        expected_by_persona, success = MATRIX[operation]
        for persona in PERSONAS:
            expected = expected_by_persona[persona] or success
            got = _call(client, world, operation, persona).status_code
            if got != expected:
                failures.append(f"{operation} as {persona}: {got}, expected {expected}")
    assert failures == []
