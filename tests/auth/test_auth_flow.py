"""The auth promises: register, login, 15-minute access tokens, rotating refresh tokens whose
reuse revokes the family, logout, and nothing that tells an attacker which emails exist."""
import datetime as dt

import jwt as pyjwt
import pytest

from tests.conftest import TEST_JWT_SECRET

PASSWORD = "a sufficiently long passphrase"


def register(client, email="Alice@Example.COM", password=PASSWORD):
    return client.post("/auth/register", json={"email": email, "password": password})


def login(client, email="alice@example.com", password=PASSWORD):
    return client.post("/auth/login", json={"email": email, "password": password})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_register_normalises_email_and_never_returns_the_password(client):
    res = register(client)
    assert res.status_code == 201
    body = res.get_json()
    assert body["email"] == "alice@example.com"
    assert body["role"] == "USER"
    assert "password" not in body and "password_hash" not in body


def test_register_same_email_in_other_case_is_409(client):
    assert register(client).status_code == 201
    res = register(client, email="ALICE@example.com")
    assert res.status_code == 409
    assert res.get_json()["error"] == "email_taken"


@pytest.mark.parametrize("payload, field", [
    ({"email": "not-an-email", "password": PASSWORD}, "email"),
    ({"email": "bob@example.com", "password": "short"}, "password"),
    ({"email": "bob@example.com", "password": "x" * 129}, "password"),
    ({"password": PASSWORD}, "email"),
    ({"email": "bob@example.com"}, "password"),
    ({"email": 12, "password": PASSWORD}, "email"),
])
def test_register_rejects_bad_input_with_a_field_error(client, payload, field):
    res = client.post("/auth/register", json=payload)
    assert res.status_code == 422
    body = res.get_json()
    assert body["error"] == "validation_error"
    assert field in body["errors"]["json"]


def test_login_returns_a_bearer_pair_with_a_15_minute_access_token(client):
    register(client)
    res = login(client, email="  ALICE@example.com ")
    assert res.status_code == 200
    body = res.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    claims = pyjwt.decode(body["access_token"], TEST_JWT_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 900
    assert claims["role"] == "USER"
    me = client.get("/auth/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.get_json()["email"] == "alice@example.com"


def test_bad_login_does_not_reveal_whether_the_email_exists(client):
    register(client)
    wrong_password = login(client, password="not the right passphrase")
    unknown_email = login(client, email="nobody@example.com")
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.get_json() == unknown_email.get_json()
    assert wrong_password.get_json()["message"] == "Invalid email or password."


def test_refresh_rotates_and_the_old_token_stops_working(client):
    register(client)
    first = login(client).get_json()
    second = client.post("/auth/refresh", headers=bearer(first["refresh_token"]))
    assert second.status_code == 200
    pair = second.get_json()
    assert pair["refresh_token"] != first["refresh_token"]
    assert client.get("/auth/me", headers=bearer(pair["access_token"])).status_code == 200
    third = client.post("/auth/refresh", headers=bearer(pair["refresh_token"]))
    assert third.status_code == 200


def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(client):
    register(client)
    first = login(client).get_json()
    rotated = client.post("/auth/refresh", headers=bearer(first["refresh_token"])).get_json()

    replay = client.post("/auth/refresh", headers=bearer(first["refresh_token"]))
    assert replay.status_code == 401
    assert replay.get_json()["error"] == "refresh_token_reused"
    # The legitimate holder's newer token is revoked too: both parties must log in again.
    after = client.post("/auth/refresh", headers=bearer(rotated["refresh_token"]))
    assert after.status_code == 401
    # Another login (another family) is unaffected.
    other = login(client).get_json()
    assert client.post("/auth/refresh", headers=bearer(other["refresh_token"])).status_code == 200


def test_logout_revokes_the_refresh_token(client):
    register(client)
    pair = login(client).get_json()
    assert client.post("/auth/logout", headers=bearer(pair["refresh_token"])).status_code == 204
    res = client.post("/auth/refresh", headers=bearer(pair["refresh_token"]))
    assert res.status_code == 401
    assert client.post("/auth/logout", headers=bearer("garbage")).status_code == 401


def test_refresh_without_or_with_a_garbage_token_is_401(client):
    assert client.post("/auth/refresh").status_code == 401
    res = client.post("/auth/refresh", headers=bearer("garbage"))
    assert res.status_code == 401 and res.get_json()["error"] == "invalid_refresh_token"


def test_expired_refresh_token_is_refused(app, client, make_settings_app):
    short = make_settings_app(refresh_token_ttl_seconds=1)
    c = short.test_client()
    register(c)
    pair = login(c).get_json()
    from sqlalchemy import update

    from wallet_api.auth.models import RefreshToken
    from wallet_api.extensions import db

    with short.app_context():
        db.session.execute(update(RefreshToken).values(
            expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
        db.session.commit()
    res = c.post("/auth/refresh", headers=bearer(pair["refresh_token"]))
    assert res.status_code == 401


def test_expired_access_token_is_401_with_a_clear_error(app, client, user):
    from flask_jwt_extended import create_access_token

    with app.app_context():
        token = create_access_token(identity=str(user.id), expires_delta=dt.timedelta(seconds=-1))
    res = client.get("/auth/me", headers=bearer(token))
    assert res.status_code == 401
    assert res.get_json()["error"] == "token_expired"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not.a.jwt"}, {"Authorization": "Basic abc"}])
def test_me_without_a_valid_access_token_is_401_in_the_envelope(client, headers):
    res = client.get("/auth/me", headers=headers)
    assert res.status_code == 401
    body = res.get_json()
    assert set(body) >= {"code", "status", "message", "error"} and body["code"] == 401


def test_token_signed_with_another_secret_is_refused(client, user):
    token = pyjwt.encode({"sub": str(user.id), "type": "access", "fresh": False, "jti": "x",
                          "iat": dt.datetime.now(dt.timezone.utc),
                          "exp": dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)},
                         "another-secret-another-secret-another-secret", algorithm="HS256")
    assert client.get("/auth/me", headers=bearer(token)).status_code == 401


def test_passwords_are_stored_as_argon2id_hashes(app, client):
    register(client)
    from sqlalchemy import select

    from wallet_api.auth.models import User
    from wallet_api.extensions import db

    with app.app_context():
        stored = db.session.scalar(select(User.password_hash))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
