"""Verified access tokens are remembered (wallet_api/jwt_manager.py), and every check still refuses
what it refused, remembered or not."""
import base64
import datetime as dt
import json
import logging
import time
import warnings

import jwt as pyjwt
import pytest
from flask import Flask
from flask_jwt_extended import create_access_token, decode_token
from jwt.algorithms import HMACAlgorithm

from tests.conftest import TEST_JWT_SECRET
from wallet_api import jwt_manager
from wallet_api.jwt_manager import RememberingJWTManager, VerifiedTokens


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def claims(user_id, **overrides):
    now = dt.datetime.now(dt.timezone.utc)
    return {"sub": str(user_id), "type": "access", "fresh": False, "jti": "j", "iat": now,
            "exp": now + dt.timedelta(minutes=5), "role": "USER", **overrides}


@pytest.fixture
def verifications(monkeypatch):
    """How many HMAC signatures were checked."""
    count = {"n": 0}
    original = HMACAlgorithm.verify

    def counting(self, msg, key, sig):
        count["n"] += 1
        return original(self, msg, key, sig)

    monkeypatch.setattr(HMACAlgorithm, "verify", counting)
    return count


def token_for(app, user, **kwargs):
    with app.app_context():
        return create_access_token(identity=str(user.id), additional_claims={"role": user.role}, **kwargs)


def test_the_upstream_method_wrapped_still_has_the_shape_it_was_written_against():
    # A flask-jwt-extended that changed it makes RememberingJWTManager fall back to upstream: say so here.
    assert jwt_manager._UPSTREAM_MATCHES, "re-read JWTManager._decode_jwt_from_config and update jwt_manager.py"


def test_a_token_is_verified_once_then_remembered(app, client, user, verifications):
    token = token_for(app, user)
    assert client.get("/auth/me", headers=bearer(token)).status_code == 200
    assert verifications["n"] == 1
    for _ in range(3):
        res = client.get("/auth/me", headers=bearer(token))
        assert res.status_code == 200 and res.get_json()["id"] == str(user.id)
    assert verifications["n"] == 1


def test_a_remembered_token_still_binds_its_user_to_the_log_lines(app, client, user, caplog):
    token = token_for(app, user)
    assert client.get("/auth/me", headers=bearer(token)).status_code == 200
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wallet_api.request"):
        assert client.get("/auth/me", headers=bearer(token)).status_code == 200
    lines = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "request"]
    assert lines and lines[-1]["user_id"] == str(user.id)


def test_a_remembered_token_is_refused_once_it_expires(app, client, user):
    token = token_for(app, user, expires_delta=dt.timedelta(seconds=2))
    assert client.get("/auth/me", headers=bearer(token)).status_code == 200  # now remembered
    expires = pyjwt.decode(token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    res = client.get("/auth/me", headers=bearer(token))
    assert res.status_code == 401 and res.get_json()["error"] == "token_expired"


def _forge(header: dict, payload: dict, signature: bytes = b"sig") -> str:
    def seg(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return ".".join([seg(json.dumps(header).encode()), seg(json.dumps(payload, default=str).encode()), seg(signature)])


def _hs512(payload: dict) -> str:
    with warnings.catch_warnings():  # the test secret is short for HS512; the point is the algorithm
        warnings.simplefilter("ignore")
        return pyjwt.encode(payload, TEST_JWT_SECRET, "HS512")


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    decoded["role"] = "ADMIN"
    forged = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    return ".".join([header, forged, signature])


@pytest.mark.parametrize("case", ["another_secret", "alg_none", "other_alg", "tampered_payload", "no_exp",
                                  "not_yet_valid", "garbage_segment", "signature_of_a_remembered_token"])
def test_every_check_still_refuses_after_a_genuine_token_was_remembered(app, client, user, case):
    genuine = token_for(app, user)
    assert client.get("/auth/me", headers=bearer(genuine)).status_code == 200
    good = claims(user.id)
    header, payload, _signature = genuine.split(".")
    token = {
        "another_secret": lambda: pyjwt.encode(good, "another-secret-another-secret-another-secret", "HS256"),
        "alg_none": lambda: _forge({"alg": "none", "typ": "JWT"}, {**good, "exp": 4102444800, "iat": 0}, b""),
        "other_alg": lambda: _hs512(good),
        "tampered_payload": lambda: _tamper(genuine),
        "no_exp": lambda: pyjwt.encode({k: v for k, v in good.items() if k != "exp"}, TEST_JWT_SECRET, "HS256"),
        "not_yet_valid": lambda: pyjwt.encode({**good, "nbf": good["exp"]}, TEST_JWT_SECRET, "HS256"),
        "garbage_segment": lambda: genuine + "!!",
        "signature_of_a_remembered_token": lambda: ".".join([header, payload, "A" * 43]),
    }[case]()
    for _ in range(2):  # refused, and not remembered as anything either
        res = client.get("/auth/me", headers=bearer(token))
        assert res.status_code == 401
        assert res.get_json()["error"] in ("invalid_token", "unauthorized")


def test_an_app_with_another_secret_does_not_accept_what_this_one_remembered(app, client, user,
                                                                              make_settings_app):
    token = token_for(app, user)
    assert client.get("/auth/me", headers=bearer(token)).status_code == 200
    other = make_settings_app(jwt_secret="a-different-secret-a-different-secret-a-different")
    res = other.test_client().get("/auth/me", headers=bearer(token))
    assert res.status_code == 401 and res.get_json()["error"] == "invalid_token"


def test_an_expired_token_reaches_its_handler_with_header_and_claims(app, user):
    with app.app_context():
        token = create_access_token(identity=str(user.id), expires_delta=dt.timedelta(seconds=-1))
        with pytest.raises(pyjwt.ExpiredSignatureError) as raised:
            decode_token(token)
    assert raised.value.jwt_header["alg"] == "HS256"
    assert raised.value.jwt_data["sub"] == str(user.id)


def test_with_a_decode_key_loader_nothing_is_remembered(verifications):
    flask_app = Flask(__name__)
    flask_app.config.update(JWT_SECRET_KEY="the-configured-secret-the-configured-secret")
    manager = RememberingJWTManager(flask_app)
    manager.decode_key_loader(lambda header, data: "a-per-issuer-secret-a-per-issuer-secret")
    token = pyjwt.encode(claims("u1"), "a-per-issuer-secret-a-per-issuer-secret", "HS256")
    with flask_app.app_context():
        assert decode_token(token)["sub"] == "u1"
        assert decode_token(token)["sub"] == "u1"
    assert verifications["n"] == 2
    assert len(flask_app.extensions["wallet_api.verified_tokens"]) == 0


def test_the_memory_is_bounded_and_forgets_the_oldest_first():
    tokens = VerifiedTokens(max_tokens=3)
    for n in range(5):
        tokens.remember(f"t{n}", "key", {"sub": str(n), "exp": time.time() + 60}, leeway=0)
    assert len(tokens) == 3
    assert tokens.get("t0", "key", time.time()) is None and tokens.get("t1", "key", time.time()) is None
    assert tokens.get("t4", "key", time.time())["sub"] == "4"
    assert tokens.get("t4", "other key", time.time()) is None  # and forgotten
    tokens.remember("no-exp", "key", {"sub": "x"}, leeway=0)
    assert tokens.get("no-exp", "key", time.time()) is None
    remembered = tokens.get("t3", "key", time.time())
    remembered["role"] = "ADMIN"  # a caller's copy
    assert "role" not in tokens.get("t3", "key", time.time())
