"""Who gets into the console: ADMINs who sign in with their password, into a session cookie that is
HttpOnly, SameSite=Strict and signed with a key derived from JWT_SECRET; forms need their CSRF
token; sessions end at sign-out (server-side too), after 30 idle minutes and after 8 hours; a USER
is refused; sign-in attempts share the auth rate limit."""
import time
import uuid

import pytest
from sqlalchemy import update

from tests.conftest import TEST_JWT_SECRET
from tests.console.conftest import csrf_token, post_form, sign_in
from wallet_api.admin.console.security import session_key
from wallet_api.auth.models import User
from wallet_api.config import RateLimits
from wallet_api.extensions import db

COOKIE = "wallet_console"
PAGES = ["/console/", "/console/alerts", f"/console/alerts/{uuid.uuid4()}", "/console/dlq",
         f"/console/dlq/{uuid.uuid4()}", "/console/wallets", f"/console/wallets/{uuid.uuid4()}", "/console/jobs",
         "/console/jobs/wallet-reconciliation", f"/console/jobs/runs/{uuid.uuid4()}", "/console/access-log"]
ACTIONS = [f"/console/alerts/{uuid.uuid4()}/resolve", f"/console/dlq/{uuid.uuid4()}/resolve",
           "/console/jobs/wallet-reconciliation/run", "/console/logout"]


def session_cookie(client):
    return client.get_cookie(COOKIE, path="/console")


def test_an_admin_signs_in_into_a_strict_http_only_cookie_scoped_to_the_console(client, admin):
    res = sign_in(client, admin)
    assert res.status_code == 303 and res.headers["Location"] == "/console/"
    set_cookie = res.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/console", "Expires="):
        assert attribute in set_cookie
    assert "Secure" not in set_cookie  # plain HTTP in tests; production sets it (below)
    page = client.get("/console/")
    assert page.status_code == 200 and admin.email in page.get_data(as_text=True)


def test_the_cookie_is_secure_in_production(make_settings_app):
    app = make_settings_app(app_env="production")
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Strict" and app.config["SESSION_COOKIE_HTTPONLY"] is True


def test_the_signing_key_is_derived_from_jwt_secret_and_is_the_same_in_every_process(app, make_settings_app):
    assert app.secret_key == session_key(TEST_JWT_SECRET)
    assert TEST_JWT_SECRET not in app.secret_key and len(app.secret_key) == 64
    assert make_settings_app().secret_key == app.secret_key  # another worker process of the same deploy
    assert make_settings_app(jwt_secret="another-jwt-secret-0123456789abcdef-0123").secret_key != app.secret_key


def test_a_cookie_signed_under_another_jwt_secret_is_not_a_session(client, admin, make_settings_app):
    other = make_settings_app(jwt_secret="another-jwt-secret-0123456789abcdef-0123").test_client()
    assert sign_in(other, admin).status_code == 303
    client.set_cookie(COOKIE, session_cookie(other).value, path="/console")
    assert client.get("/console/").status_code == 303


@pytest.mark.parametrize("email, password", [("known", "wrong password"), ("nobody@example.com", "whatever"),
                                             ("known", "")])
def test_wrong_credentials_get_one_message_and_no_session(client, admin, email, password):
    res = client.post("/console/login", data={"email": admin.email if email == "known" else email,
                                              "password": password, "csrf_token": csrf_token(client)})
    assert res.status_code == 401
    assert "Invalid email or password." in res.get_data(as_text=True)
    assert client.get("/console/").status_code == 303


def test_a_user_who_signs_in_is_refused_and_gets_no_session(client, user, access_records):
    res = sign_in(client, user)
    assert res.status_code == 403
    assert "for administrators only" in res.get_data(as_text=True)
    assert client.get("/console/").status_code == 303
    login = [r for r in access_records() if r["action"] == "console.login"]
    assert [(r["actor_id"], r["actor_role"], r["status_code"]) for r in login] == [(user.id, "USER", 403)]


def test_an_admin_demoted_while_signed_in_is_refused_at_the_next_request(app, operator, admin):
    with app.app_context():
        db.session.execute(update(User).where(User.id == admin.id).values(role="USER"))
        db.session.commit()
        db.session.remove()
    assert operator.get("/console/").status_code == 403
    assert operator.get("/console/").status_code == 303  # and the session is over


@pytest.mark.parametrize("path", PAGES)
def test_without_a_session_every_page_sends_the_visitor_to_sign_in(client, path):
    res = client.get(path)
    assert res.status_code == 303
    assert res.headers["Location"] == f"/console/login?next={path}"


@pytest.mark.parametrize("path", ACTIONS)
def test_without_a_session_no_action_runs(client, path, books):
    res = client.post(path, data={"note": "n", "action": "discard", "csrf_token": csrf_token(client)})
    assert res.status_code == 303 and res.headers["Location"].startswith("/console/login")
    assert books.count("job_runs") == 0


def test_after_signing_in_the_visitor_lands_where_they_were_going(client, admin):
    assert sign_in(client, admin, next_path="/console/dlq?status=resolved").headers["Location"] == \
        "/console/dlq?status=resolved"


@pytest.mark.parametrize("target", ["https://evil.example/console/", "//evil.example/console/", "/auth/me",
                                    "/\\evil.example", "javascript:alert(1)"])
def test_the_next_page_is_never_outside_the_console(client, admin, target):
    assert sign_in(client, admin, next_path=target).headers["Location"] == "/console/"


def test_signing_out_ends_the_session_even_for_a_copied_cookie(operator, books):
    copied = session_cookie(operator).value
    res = post_form(operator, "/console/logout")
    assert res.status_code == 303 and res.headers["Location"] == "/console/login"
    assert "Signed out." in operator.get("/console/login").get_data(as_text=True)
    assert operator.get("/console/").status_code == 303
    operator.set_cookie(COOKIE, copied, path="/console")
    assert operator.get("/console/").status_code == 303
    assert books.read("SELECT revoked_at FROM refresh_tokens")[0]["revoked_at"] is not None


@pytest.mark.parametrize("field, age", [("seen", 31 * 60), ("started", 8 * 3600 + 1)])
def test_a_session_expires_after_30_idle_minutes_or_8_hours(operator, books, field, age):
    with operator.session_transaction("/console/") as session:
        session[field] = int(time.time()) - age
    res = operator.get("/console/alerts")
    assert res.status_code == 303 and res.headers["Location"].startswith("/console/login")
    assert "Your session expired" in operator.get(res.headers["Location"]).get_data(as_text=True)
    assert books.read("SELECT revoked_at FROM refresh_tokens")[0]["revoked_at"] is not None


def test_each_request_keeps_an_active_session_alive(operator):
    with operator.session_transaction("/console/") as session:
        session["seen"] = int(time.time()) - 29 * 60
    assert operator.get("/console/jobs").status_code == 200
    with operator.session_transaction("/console/") as session:
        assert int(time.time()) - session["seen"] < 5


def test_the_server_side_session_ends_at_the_absolute_limit_too(operator, books):
    row = books.read("SELECT expires_at - created_at AS lifetime FROM refresh_tokens")[0]
    assert row["lifetime"].total_seconds() == pytest.approx(8 * 3600, abs=5)


def test_a_post_without_its_csrf_token_is_refused(operator, alert_id, books):
    for data in ({"note": "done"}, {"note": "done", "csrf_token": "forged"}):
        res = operator.post(f"/console/alerts/{alert_id}/resolve", data=data)
        assert res.status_code == 400
        assert "security token" in res.get_data(as_text=True)
    assert books.read("SELECT resolved FROM alert_log")[0]["resolved"] is False


def test_a_csrf_token_of_another_session_is_refused(app, operator, make_user, alert_id, books):
    other = app.test_client()
    assert sign_in(other, make_user(role="ADMIN")).status_code == 303
    res = operator.post(f"/console/alerts/{alert_id}/resolve",
                        data={"note": "done", "csrf_token": csrf_token(other, "/console/")})
    assert res.status_code == 400
    assert books.read("SELECT resolved FROM alert_log")[0]["resolved"] is False


def test_the_login_form_needs_its_csrf_token_too(client, admin):
    res = client.post("/console/login", data={"email": admin.email, "password": "correct horse battery staple"})
    assert res.status_code == 400 and client.get("/console/").status_code == 303


def test_sign_in_attempts_share_the_auth_rate_limit(make_settings_app, admin):
    app = make_settings_app(ratelimit_enabled=True, rate_limits=RateLimits(auth="3/minute"))
    client = app.test_client()
    token = csrf_token(client)
    codes = [client.post("/console/login", data={"email": admin.email, "password": "wrong", "csrf_token": token}
                         ).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    refused = client.post("/console/login", data={"email": admin.email, "password": "correct horse battery staple",
                                                  "csrf_token": token})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "Too many attempts" in refused.get_data(as_text=True)
    assert client.get("/console/login").status_code == 200  # the form itself is not limited


def test_pages_are_not_cached_framed_or_allowed_inline_code(operator):
    res = operator.get("/console/")
    assert res.headers["Cache-Control"] == "no-store" and res.headers["X-Frame-Options"] == "DENY"
    csp = res.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    body = res.get_data(as_text=True)
    assert "<script" not in body and "style=" not in body
    css = operator.get("/console/static/console.css")
    assert css.status_code == 200 and css.mimetype == "text/css"


def test_the_json_api_is_untouched_by_the_console(client, user):
    res = client.post("/auth/login", json={"email": user.email, "password": "correct horse battery staple"})
    assert res.status_code == 200 and "Set-Cookie" not in res.headers  # no CSRF token, no session cookie
