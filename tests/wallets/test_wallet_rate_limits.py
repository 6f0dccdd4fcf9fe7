"""Per-user limits on wallet reads, wallet writes, transfers and admin adjustments (counted in Redis)."""
import pytest

from wallet_api.config import RateLimits
from wallet_api.extensions import db


@pytest.fixture
def limited_app(make_settings_app):
    app = make_settings_app(ratelimit_enabled=True, rate_limits=RateLimits(
        wallet_read="3/minute", wallet_write="2/minute", transfers="2/minute"))
    yield app
    with app.app_context():
        db.engine.dispose()


def statuses(send, n):
    return [send().status_code for _ in range(n)]


def test_wallet_reads_and_writes_have_their_own_per_user_budgets(limited_app, auth_headers, make_user):
    client = limited_app.test_client()
    me, other = make_user(), make_user()
    assert statuses(lambda: client.get("/wallets", headers=auth_headers(me)), 4) == [200, 200, 200, 429]
    res = client.get("/wallets", headers=auth_headers(me))
    assert res.status_code == 429 and res.get_json()["code"] == 429 and int(res.headers["Retry-After"]) > 0
    # Writes on the same route are counted separately, and another user has a budget of their own.
    writes = [client.post("/wallets", json={"currency": c}, headers=auth_headers(me)).status_code
              for c in ("USD", "EUR", "GBP")]
    assert writes == [201, 201, 429]
    ok = client.get("/wallets", headers=auth_headers(other))
    assert ok.status_code == 200 and ok.headers["X-RateLimit-Limit"] == "3"
    assert ok.headers["X-RateLimit-Remaining"] == "2"


def test_transfers_have_their_own_limit(limited_app, auth_headers, make_user, funded_wallet, make_wallet):
    client = limited_app.test_client()
    me = make_user()
    source, target = funded_wallet("10.00", user=me), make_wallet()
    body = {"from_wallet_id": str(source), "to_wallet_id": str(target), "amount": "1.00"}
    assert statuses(lambda: client.post("/transfers", json=body, headers=auth_headers(me)), 3) == [201, 201, 429]
    assert client.get(f"/wallets/{source}", headers=auth_headers(me)).status_code == 200


def test_the_emergency_admin_credit_allows_two_per_minute_and_debit_uses_the_admin_budget(
        limited_app, auth_headers, admin, funded_wallet):
    client = limited_app.test_client()
    wallet = funded_wallet("10.00")
    body = {"amount": "1.00", "reason": "test"}
    credit = statuses(lambda: client.post(f"/admin/wallets/{wallet}/credit", json=body, headers=auth_headers(admin)), 3)
    assert credit == [201, 201, 429]
    debit = client.post(f"/admin/wallets/{wallet}/debit", json=body, headers=auth_headers(admin))
    assert debit.status_code == 201 and debit.headers["X-RateLimit-Limit"] == "60"
