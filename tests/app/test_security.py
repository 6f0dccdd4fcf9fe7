"""Production's HTTPS rule, the headers every response carries, and the tokens the API refuses."""
import re

import pytest
from flask_jwt_extended import create_access_token
from sqlalchemy import text

from tests.conftest import FACTORY_PASSWORD
from wallet_api.config import RateLimits
from wallet_api.extensions import db

HTTPS = "https://api.example.com"


@pytest.fixture
def production(make_settings_app):
    return make_settings_app(app_env="production").test_client()


def test_production_redirects_plain_http_reads_to_https_with_308(production):
    res = production.get("/wallets?limit=5", base_url="http://api.example.com")
    assert res.status_code == 308
    assert res.headers["Location"] == "https://api.example.com/wallets?limit=5"


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch"])
def test_production_refuses_plain_http_writes_without_acting_on_them(production, method):
    res = getattr(production, method)("/auth/register", json={"email": "a@example.com", "password": "x" * 12},
                                      base_url="http://api.example.com")
    assert res.status_code == 400
    assert res.get_json()["error"] == "https_required"


def test_production_answers_health_probes_over_plain_http(production):
    assert production.get("/health", base_url="http://api.example.com").status_code == 200


def test_production_over_https_sends_hsts_and_serves_normally(production, user, auth_headers):
    res = production.get("/wallets", headers=auth_headers(user), base_url=HTTPS)
    assert res.status_code == 200
    assert res.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_behind_a_trusted_proxy_the_forwarded_scheme_decides(make_settings_app, user, auth_headers):
    c = make_settings_app(app_env="production", trusted_proxy_count=1).test_client()
    forwarded_https = c.get("/wallets", headers={**auth_headers(user), "X-Forwarded-Proto": "https",
                                                 "X-Forwarded-For": "203.0.113.4"})
    assert forwarded_https.status_code == 200
    forwarded_http = c.get("/wallets", headers={**auth_headers(user), "X-Forwarded-Proto": "http",
                                                "X-Forwarded-For": "203.0.113.4"})
    assert forwarded_http.status_code == 308


def test_every_api_response_carries_the_security_headers(client, user, auth_headers):
    for res in (client.get("/health"), client.get("/wallets", headers=auth_headers(user)),
                client.get("/wallets"), client.get("/no-such-route"),
                client.post("/auth/login", json={"email": "nobody@example.com", "password": "x"})):
        assert res.headers["X-Content-Type-Options"] == "nosniff"
        assert res.headers["X-Frame-Options"] == "DENY"
        assert res.headers["Referrer-Policy"] == "no-referrer"
        assert res.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert res.headers["Cache-Control"] == "no-store"
        assert "Origin" in res.headers["Vary"]
        assert "Strict-Transport-Security" not in res.headers  # only production promises HTTPS


def test_token_responses_are_never_cached(client, make_user):
    user = make_user()
    res = client.post("/auth/login", json={"email": user.email, "password": FACTORY_PASSWORD})
    assert res.status_code == 200 and "refresh_token" in res.get_json()
    assert res.headers["Cache-Control"] == "no-store"


def test_cors_answers_say_they_vary_by_origin(make_settings_app):
    c = make_settings_app(cors_allowed_origins=("https://app.example.com",)).test_client()
    res = c.get("/health", headers={"Origin": "https://app.example.com"})
    assert res.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Origin" in res.headers["Vary"]


def test_retry_after_is_sent_only_with_a_refusal(make_settings_app):
    c = make_settings_app(ratelimit_enabled=True, rate_limits=RateLimits(auth="2/minute")).test_client()
    answers = [c.post("/auth/login", json={"email": "x@example.com", "password": "p"}) for _ in range(3)]
    assert [r.status_code for r in answers] == [401, 401, 429]
    assert all("Retry-After" not in r.headers for r in answers[:2])
    assert all("X-RateLimit-Limit" in r.headers for r in answers[:2])
    assert int(answers[2].headers["Retry-After"]) > 0
    assert all("X-RateLimit-Retry-After" not in r.headers for r in answers)


def test_the_docs_load_swagger_ui_from_this_app_only(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "http" not in csp
    html = page.get_data(as_text=True)
    assert "<script>" not in html  # no inline script: every script is a file of this origin
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(source.startswith("/") for source in sources)
    for source in sources:
        assert client.get(source).status_code == 200, source
    assert b"/openapi.json" in page.data
    assert client.get("/docs/static/index.html").status_code == 404  # only the assets the page loads


def test_an_access_token_without_expiry_is_refused(app, client, user):
    with app.app_context():
        forever = create_access_token(identity=str(user.id), additional_claims={"role": "USER"},
                                      expires_delta=False)
    res = client.get("/wallets", headers={"Authorization": f"Bearer {forever}"})
    assert res.status_code == 401
    assert res.get_json()["error"] == "invalid_token"


def test_logout_with_a_revoked_refresh_token_is_401(client, make_user):
    user = make_user()
    tokens = client.post("/auth/login", json={"email": user.email, "password": FACTORY_PASSWORD}).get_json()
    bearer = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    assert client.post("/auth/logout", headers=bearer).status_code == 204
    again = client.post("/auth/logout", headers=bearer)
    assert again.status_code == 401
    assert again.get_json()["error"] == "invalid_refresh_token"


def test_failed_logins_are_throttled_per_account_across_ips(make_settings_app, make_user):
    victim, bystander = make_user(), make_user()
    app = make_settings_app(ratelimit_enabled=True,
                            rate_limits=RateLimits(auth="100/minute", login_failures="3 per 15 minutes"))
    c = app.test_client()

    def login(email, password, ip):
        return c.post("/auth/login", json={"email": email, "password": password},
                      environ_base={"REMOTE_ADDR": ip})

    # Each guess from a different address: a per-IP limit would never notice.
    assert [login(victim.email, f"guess-{i}", f"198.51.100.{i}").status_code for i in range(3)] == [401] * 3
    # The email is normalised, so case and spaces do not reset the count.
    refused = login(f"  {victim.email.upper()} ", FACTORY_PASSWORD, "198.51.100.99")
    assert refused.status_code == 429
    assert refused.get_json()["error"] == "account_throttled"
    assert int(refused.headers["Retry-After"]) > 0
    # Other accounts are untouched, and successes were never charged.
    for _ in range(4):
        assert login(bystander.email, FACTORY_PASSWORD, "198.51.100.99").status_code == 200
    # Unknown emails are throttled the same way: the throttle does not reveal which accounts exist.
    assert [login("nobody@example.com", "x", f"192.0.2.{i}").status_code for i in range(4)] == [401] * 3 + [429]


def test_the_auth_routes_share_one_budget_per_ip(make_settings_app, make_user):
    user = make_user()
    c = make_settings_app(ratelimit_enabled=True, rate_limits=RateLimits(auth="3/minute")).test_client()
    ip = {"REMOTE_ADDR": "203.0.113.50"}
    tokens = c.post("/auth/login", json={"email": user.email, "password": FACTORY_PASSWORD},
                    environ_base=ip).get_json()
    assert c.post("/auth/login", json={"email": user.email, "password": "wrong"}, environ_base=ip).status_code == 401
    assert c.post("/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"},
                  environ_base=ip).status_code == 200
    # The budget is spent: registering or refreshing from the same address is refused as well.
    assert c.post("/auth/register", json={"email": "new@example.com", "password": "x" * 12},
                  environ_base=ip).status_code == 429
    assert c.post("/auth/refresh", headers={"Authorization": "Bearer whatever"}, environ_base=ip).status_code == 429


def test_a_deeply_nested_login_body_with_rate_limits_on_is_a_400(make_settings_app):
    c = make_settings_app(ratelimit_enabled=True).test_client()
    res = c.post("/auth/login", data="[" * 10000 + "]" * 10000, content_type="application/json")
    assert res.status_code == 400


def test_database_errors_do_not_carry_statement_parameters(app):
    with app.app_context():
        with pytest.raises(Exception) as failure:
            db.session.execute(text("SELECT CAST(:email AS text), 1 / 0"), {"email": "someone@example.com"})
        db.session.rollback()
    assert "division by zero" in str(failure.value)
    assert "someone@example.com" not in str(failure.value)
