"""Access tokens are decoded once per request, and every check still refuses what it refused."""
import base64
import datetime as dt
import json
import warnings

import jwt as pyjwt
import pytest
from flask import Flask
from flask_jwt_extended import JWTManager, create_access_token, decode_token
from jwt.api_jws import PyJWS

from tests.conftest import TEST_JWT_SECRET
from wallet_api import jwt_manager
from wallet_api.jwt_manager import SingleDecodeJWTManager


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def claims(user_id, **overrides):
    now = dt.datetime.now(dt.timezone.utc)
    return {"sub": str(user_id), "type": "access", "fresh": False, "jti": "j", "iat": now,
            "exp": now + dt.timedelta(minutes=5), "role": "USER", **overrides}


def test_the_upstream_method_replaced_still_has_the_shape_it_was_written_against():
    # A flask-jwt-extended that changed it makes SingleDecodeJWTManager fall back to upstream: say so here.
    assert jwt_manager._UPSTREAM_MATCHES, "re-read JWTManager._decode_jwt_from_config and update jwt_manager.py"


def test_a_request_decodes_its_token_once_plus_the_header(app, client, user, monkeypatch):
    with app.app_context():
        token = create_access_token(identity=str(user.id), additional_claims={"role": "USER"})
    loads = []
    original = PyJWS._load
    monkeypatch.setattr(PyJWS, "_load", lambda self, jwt: loads.append(jwt) or original(self, jwt))
    res = client.get("/auth/me", headers=bearer(token))
    assert res.status_code == 200
    # One verified decode; flask-jwt-extended's view decorator reads the header once more. Upstream: 4.
    assert len(loads) == 2


def _forge(header: dict, payload: dict, signature: bytes = b"sig") -> str:
    def seg(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return ".".join([seg(json.dumps(header).encode()), seg(json.dumps(payload, default=str).encode()), seg(signature)])


@pytest.mark.parametrize("case", ["another_secret", "alg_none", "other_alg", "tampered_payload", "no_exp",
                                  "not_yet_valid", "garbage_segment"])
def test_every_check_still_refuses(client, user, case):
    good = claims(user.id)
    token = {
        "another_secret": lambda: pyjwt.encode(good, "another-secret-another-secret-another-secret", "HS256"),
        "alg_none": lambda: _forge({"alg": "none", "typ": "JWT"}, {**good, "exp": 4102444800, "iat": 0}, b""),
        "other_alg": lambda: _hs512(good),
        "tampered_payload": lambda: _tamper(pyjwt.encode(good, TEST_JWT_SECRET, "HS256")),
        "no_exp": lambda: pyjwt.encode({k: v for k, v in good.items() if k != "exp"}, TEST_JWT_SECRET, "HS256"),
        "not_yet_valid": lambda: pyjwt.encode({**good, "nbf": good["exp"]}, TEST_JWT_SECRET, "HS256"),
        "garbage_segment": lambda: pyjwt.encode(good, TEST_JWT_SECRET, "HS256") + "!!",
    }[case]()
    res = client.get("/auth/me", headers=bearer(token))
    assert res.status_code == 401
    assert res.get_json()["error"] in ("invalid_token", "unauthorized")


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


def test_an_expired_token_reaches_its_handler_with_header_and_claims(app, user):
    with app.app_context():
        token = create_access_token(identity=str(user.id), expires_delta=dt.timedelta(seconds=-1))
        with pytest.raises(pyjwt.ExpiredSignatureError) as raised:
            decode_token(token)
    assert raised.value.jwt_header["alg"] == "HS256"
    assert raised.value.jwt_data["sub"] == str(user.id)


def test_with_a_decode_key_loader_upstream_decodes_as_before():
    flask_app = Flask(__name__)
    flask_app.config.update(JWT_SECRET_KEY="the-configured-secret-the-configured-secret")
    manager = SingleDecodeJWTManager(flask_app)
    manager.decode_key_loader(lambda header, data: "a-per-issuer-secret-a-per-issuer-secret")
    token = pyjwt.encode(claims("u1"), "a-per-issuer-secret-a-per-issuer-secret", "HS256")
    with flask_app.app_context():
        assert decode_token(token)["sub"] == "u1"
    assert isinstance(manager, JWTManager)
