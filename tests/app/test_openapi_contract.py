"""The OpenAPI document tells the truth: real responses of the real routes, on their success and error
paths (400, 401, 403, 404, 409, 413, 422, 429, 503), have a status the operation declares, the declared
content type, and a body and headers that validate against the declared schema. And the document
itself is usable by standard tooling: the one error envelope, errors declared per operation, and
regular expressions in ECMA-262 (the dialect JSON Schema's `pattern` is written in)."""
from __future__ import annotations

import functools
import uuid

import pytest
import regress
import schemathesis

from tests.conftest import FACTORY_PASSWORD
from tests.fuzz.checks import CHECKS, not_a_server_error
from wallet_api.config import RateLimits

NOWHERE = str(uuid.UUID(int=1))


def conforms(app, method: str, template: str, response, expected: int) -> None:
    """Assert `response` got `expected` and keeps to what the document says of `method template`."""
    assert response.status_code == expected, (method, template, response.status_code, response.get_data(as_text=True))
    operation = _loaded(app)[template][method.upper()]
    # `default` (kept for the unexpected 500) would let any status conform: the answer must be declared.
    assert str(expected) in operation.definition.raw["responses"], (method, template, expected)
    case = operation.Case()
    # A deliberate 503 (the database is down) is what this case is about, not a crash: every other check holds.
    checks = CHECKS if expected < 500 else [check for check in CHECKS if check is not not_a_server_error]
    case.validate_response(response, checks=checks)
    if expected >= 400:
        body = response.get_json()
        assert body["code"] == expected and body["error"] and body["message"], body


@functools.lru_cache(maxsize=4)
def _loaded(app):
    """The app's document as schemathesis reads it (once per app: it is the same for the app's life)."""
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


@pytest.fixture
def spec(client):
    return client.get("/openapi.json").get_json()


def _operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield method, path, operation, item.get("parameters", []) + operation.get("parameters", [])


# --------------------------------------------------------------------------- the document itself


def test_the_error_envelope_is_published_as_sent(spec):
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "status", "message", "error"}
    assert error.get("additionalProperties") is not False
    assert error["properties"]["errors"]["type"] == "object"


# Operations that touch no database (a 503 is not theirs to give), and the Prometheus scrape, which
# speaks text where everything else speaks JSON.
NO_DATABASE = {"/health", "/ready", "/metrics"}
NOT_JSON = {"/metrics"}


def test_every_error_response_is_json_in_the_envelope_or_a_schema_of_its_own(spec):
    responses = spec["components"]["responses"]
    for method, path, operation, _ in _operations(spec):
        if path in NOT_JSON:
            continue
        for status, response in operation["responses"].items():
            if status == "default" or int(status) >= 400:
                response = responses[response["$ref"].rsplit("/", 1)[1]] if "$ref" in response else response
                content = response.get("content", {})
                assert list(content) == ["application/json"], (method, path, status)
                assert "$ref" in content["application/json"]["schema"], (method, path, status)


def test_errors_are_declared_per_operation_from_what_the_operation_is(spec):
    for method, path, operation, parameters in _operations(spec):
        declared = set(operation["responses"])
        where = f"{method.upper()} {path}"
        if operation.get("security"):
            assert "401" in declared, where
        if path.startswith("/admin/"):
            assert {"401", "403", "429"} <= declared, where
        if any(p["in"] == "path" for p in parameters):
            assert "404" in declared, where
        if "requestBody" in operation:
            assert {"400", "413"} <= declared, where
        if any(p["in"] in ("query", "header") for p in parameters) or "requestBody" in operation:
            assert "422" in declared or path == "/webhooks/moonpay", where
        if any(p["name"] == "Idempotency-Key" for p in parameters):
            assert {"400", "409", "422"} <= declared, where
        if path not in NO_DATABASE:
            assert "503" in declared, where
    assert "429" not in _responses(spec, "post", "/webhooks/moonpay")  # never rate limited
    assert "429" not in _responses(spec, "get", "/health") and "503" not in _responses(spec, "get", "/health")
    assert "403" not in _responses(spec, "get", "/wallets")


def _responses(spec, method, path):
    return spec["paths"][path][method]["responses"]


def _patterns(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def test_every_pattern_is_an_ecma_262_regular_expression(spec):
    patterns = sorted(set(_patterns(spec)))
    assert patterns, "the document has patterns (amounts, the admin reason)"
    for pattern in patterns:
        regress.Regex(pattern, "u")  # raises RegressError on what ECMA-262 refuses, e.g. (?s)
    with pytest.raises(regress.RegressError):
        regress.Regex(r"(?s).*\S", "u")  # the pattern this document once published


def test_the_admin_reason_pattern_means_in_ecma_262_what_the_server_checks(spec):
    from wallet_api.wallets.schemas import NOT_BLANK_PATTERN, not_blank

    assert NOT_BLANK_PATTERN in set(_patterns(spec))
    samples = ["ok", " x ", "\t\n", " ", "\u00a0", "\u3000x", "\u2028", "\x1c\x1f", "\ufeff", "\x85", "a\u200b"]
    pattern = regress.Regex(NOT_BLANK_PATTERN, "u")

    def accepted(value):
        try:
            not_blank()(value)
            return True
        except Exception:
            return False

    # JSON Schema's `pattern` is an unanchored search, like RegExp.prototype.test.
    assert [pattern.find(s) is not None for s in samples] == [accepted(s) for s in samples]


# --------------------------------------------------------------------------- real responses


@pytest.fixture
def people(client, make_user):
    """A user and an admin, logged in through the API."""
    found = {}
    for name, role in (("user", "USER"), ("admin", "ADMIN")):
        person = make_user(role=role)
        pair = client.post("/auth/login", json={"email": person.email, "password": FACTORY_PASSWORD}).get_json()
        found[name] = {"person": person, "access": pair["access_token"], "refresh": pair["refresh_token"]}
    return found


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_auth_answers_keep_to_the_document(app, client, people):
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "password": "a long passphrase"}
    conforms(app, "post", "/auth/register", client.post("/auth/register", json=body), 201)
    conforms(app, "post", "/auth/register", client.post("/auth/register", json=body), 409)
    conforms(app, "post", "/auth/register", client.post("/auth/register", json={"email": "nope"}), 422)
    conforms(app, "post", "/auth/register", client.post("/auth/register", data="{", content_type="application/json"),
             400)
    conforms(app, "post", "/auth/login", client.post("/auth/login", json=body), 200)
    conforms(app, "post", "/auth/login", client.post("/auth/login", json={**body, "password": "wrong password!"}), 401)
    user = people["user"]
    conforms(app, "get", "/auth/me", client.get("/auth/me", headers=bearer(user["access"])), 200)
    conforms(app, "get", "/auth/me", client.get("/auth/me"), 401)
    conforms(app, "get", "/auth/me", client.get("/auth/me", headers=bearer("not.a.token")), 401)
    refreshed = client.post("/auth/refresh", headers=bearer(user["refresh"]))
    conforms(app, "post", "/auth/refresh", refreshed, 200)
    conforms(app, "post", "/auth/refresh", client.post("/auth/refresh", headers=bearer(user["refresh"])), 401)
    conforms(app, "post", "/auth/logout", client.post("/auth/logout"), 401)
    # The reuse revoked that family; the admin's token is of another one.
    conforms(app, "post", "/auth/logout", client.post("/auth/logout", headers=bearer(people["admin"]["refresh"])), 204)


def test_wallet_and_transfer_answers_keep_to_the_document(app, client, people, funded_wallet, make_wallet):
    user = people["user"]
    headers = bearer(user["access"])
    own, theirs = funded_wallet("10.00", user=user["person"]), make_wallet()
    conforms(app, "post", "/wallets", client.post("/wallets", headers=headers, json={"currency": "EUR"}), 201)
    conforms(app, "post", "/wallets", client.post("/wallets", headers=headers, json={"currency": "EUR"}), 409)
    conforms(app, "post", "/wallets", client.post("/wallets", headers=headers, json={"currency": "XXX"}), 422)
    conforms(app, "get", "/wallets", client.get("/wallets", headers=headers), 200)
    conforms(app, "get", "/wallets/{wallet_id}", client.get(f"/wallets/{own}", headers=headers), 200)
    conforms(app, "get", "/wallets/{wallet_id}", client.get(f"/wallets/{theirs}", headers=headers), 404)
    conforms(app, "get", "/wallets/{wallet_id}", client.get("/wallets/not-a-uuid", headers=headers), 404)
    conforms(app, "get", "/wallets/{wallet_id}/ledger", client.get(f"/wallets/{own}/ledger?limit=1", headers=headers),
             200)
    conforms(app, "get", "/wallets/{wallet_id}/ledger",
             client.get(f"/wallets/{own}/ledger?limit=0", headers=headers), 422)
    conforms(app, "get", "/wallets/{wallet_id}/ledger",
             client.get(f"/wallets/{own}/ledger?cursor=garbage", headers=headers), 422)
    move = {"from_wallet_id": str(own), "to_wallet_id": str(theirs), "amount": "1.00"}
    first = client.post("/transfers", headers={**headers, "Idempotency-Key": "k-1"}, json=move)
    conforms(app, "post", "/transfers", first, 201)
    replay = client.post("/transfers", headers={**headers, "Idempotency-Key": "k-1"}, json=move)
    conforms(app, "post", "/transfers", replay, 201)
    conforms(app, "post", "/transfers",
             client.post("/transfers", headers={**headers, "Idempotency-Key": "k-1"}, json={**move, "amount": "2.00"}),
             422)
    conforms(app, "post", "/transfers", client.post("/transfers", headers={**headers, "Idempotency-Key": "\x7f"},
                                                    json=move), 400)
    conforms(app, "post", "/transfers", client.post("/transfers", headers=headers, json={**move, "amount": "99.00"}),
             422)
    backwards = {**move, "from_wallet_id": str(theirs), "to_wallet_id": str(own)}
    conforms(app, "post", "/transfers", client.post("/transfers", headers=headers, json=backwards), 404)
    conforms(app, "post", "/transfers", client.post("/transfers", headers=headers, json={**move, "amount": 1}), 422)
    transfer = first.get_json()["id"]
    conforms(app, "get", "/transfers/{transfer_id}", client.get(f"/transfers/{transfer}", headers=headers), 200)
    conforms(app, "get", "/transfers/{transfer_id}", client.get(f"/transfers/{NOWHERE}", headers=headers), 404)
    conforms(app, "post", "/transfers", client.post("/transfers", headers=headers,
                                                    data=b'{"a": "' + b"x" * (2 * 1024 * 1024) + b'"}',
                                                    content_type="application/json"), 413)


def test_onramp_and_webhook_answers_keep_to_the_document(app, client, people, crypto_wallet):
    user = people["user"]
    headers = bearer(user["access"])
    wallet = crypto_wallet(user["person"], "ETH")
    body = {"wallet_id": str(wallet), "base_currency": "usd", "base_amount": "50.00"}
    session = client.post("/onramp/sessions", headers=headers, json=body)
    conforms(app, "post", "/onramp/sessions", session, 201)
    conforms(app, "post", "/onramp/sessions",
             client.post("/onramp/sessions", headers=headers, json={**body, "wallet_id": NOWHERE}), 404)
    conforms(app, "get", "/onramp/transactions", client.get("/onramp/transactions", headers=headers), 200)
    conforms(app, "get", "/onramp/transactions/{transaction_id}",
             client.get(f"/onramp/transactions/{session.get_json()['id']}", headers=headers), 200)
    conforms(app, "get", "/onramp/transactions/{transaction_id}",
             client.get(f"/onramp/transactions/{NOWHERE}", headers=headers), 404)
    conforms(app, "post", "/webhooks/moonpay", client.post("/webhooks/moonpay", json={"type": "x"}), 401)


def test_admin_answers_keep_to_the_document(app, client, people, funded_wallet):
    user, admin = bearer(people["user"]["access"]), bearer(people["admin"]["access"])
    wallet = funded_wallet("10.00")
    conforms(app, "get", "/admin/dlq", client.get("/admin/dlq"), 401)
    conforms(app, "get", "/admin/dlq", client.get("/admin/dlq", headers=user), 403)
    conforms(app, "get", "/admin/dlq", client.get("/admin/dlq", headers=admin), 200)
    conforms(app, "get", "/admin/dlq", client.get("/admin/dlq?status=maybe", headers=admin), 422)
    conforms(app, "post", "/admin/dlq/{entry_id}/resolve",
             client.post(f"/admin/dlq/{NOWHERE}/resolve", headers=admin, json={"note": "n", "action": "discard"}), 404)
    conforms(app, "get", "/admin/alerts/{alert_id}", client.get(f"/admin/alerts/{NOWHERE}", headers=admin), 404)
    conforms(app, "get", "/admin/jobs", client.get("/admin/jobs", headers=admin), 200)
    conforms(app, "post", "/admin/jobs/{name}/run", client.post("/admin/jobs/nothing/run", headers=admin), 404)
    conforms(app, "get", "/admin/access-log", client.get("/admin/access-log", headers=admin), 200)
    conforms(app, "get", "/admin/wallets", client.get("/admin/wallets?needs_reconciliation=true", headers=admin), 200)
    credit = {"amount": "1.00", "reason": "goodwill"}
    conforms(app, "post", "/admin/wallets/{wallet_id}/credit",
             client.post(f"/admin/wallets/{wallet}/credit", headers=admin, json=credit), 201)
    conforms(app, "post", "/admin/wallets/{wallet_id}/debit",
             client.post(f"/admin/wallets/{wallet}/debit", headers=admin, json={**credit, "reason": " \u3000\t"}), 422)
    conforms(app, "post", "/admin/wallets/{wallet_id}/debit",
             client.post(f"/admin/wallets/{wallet}/debit", headers=admin, json={**credit, "amount": "1000.00"}), 422)


def test_a_rate_limited_answer_keeps_to_the_document(make_settings_app, people):
    app = make_settings_app(ratelimit_enabled=True, rate_limits=RateLimits(wallet_read="1/minute", admin="1/minute"))
    client = app.test_client()
    for path, persona in (("/wallets", "user"), ("/admin/jobs", "admin")):
        headers = bearer(people[persona]["access"])
        conforms(app, "get", path, client.get(path, headers=headers), 200)
        limited = client.get(path, headers=headers)
        conforms(app, "get", path, limited, 429)
        assert int(limited.headers["Retry-After"]) > 0


def test_a_database_outage_answer_keeps_to_the_document(make_settings_app, people):
    # Nothing listens on port 1: every connection attempt is refused at once.
    app = make_settings_app(database_url="postgresql://nobody:nothing@127.0.0.1:1/none")
    client = app.test_client()
    res = client.get("/wallets", headers=bearer(people["user"]["access"]))
    conforms(app, "get", "/wallets", res, 503)
    assert res.get_json()["error"] == "database_unavailable" and res.headers["Retry-After"]
