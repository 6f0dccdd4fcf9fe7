"""flask-jwt-extended's JWTManager, decoding each access token once instead of three times.

flask-jwt-extended 4.7 (`JWTManager._decode_jwt_from_config`) decodes every token twice without
verifying it (claims, then header) so that a `decode_key_loader` callback can choose the key from
them, and then a third time with the key, verifying signature, algorithm, expiry and the required
claims. PyJWT 2.15 checks each base64url segment character by character in Python, so the two
unverified decodes cost about a tenth of a millisecond per authenticated request. This app
registers no decode_key_loader (the key is always JWT_SECRET_KEY), so they are skipped: the token
goes straight to the library's own verified decode (`_decode_jwt`, with the same arguments as
upstream), and an expired token still carries its header and claims to the expired-token handler.
Every check is the library's; only the decodes whose result nobody reads are gone.

With a decode_key_loader registered, or a flask-jwt-extended whose private method has another shape
(tests/auth/test_jwt_manager.py pins it), upstream's own path runs instead.
"""
from __future__ import annotations

import inspect

import jwt as pyjwt
from flask_jwt_extended import JWTManager
from flask_jwt_extended.config import config
from flask_jwt_extended.default_callbacks import default_decode_key_callback
from flask_jwt_extended.tokens import _decode_jwt

# The upstream method this class replaces, as it was when this was written (4.7.4).
UPSTREAM_SIGNATURE = "(self, encoded_token: str, csrf_value=None, allow_expired: bool = False) -> dict"
_UPSTREAM_MATCHES = str(inspect.signature(JWTManager._decode_jwt_from_config)) == UPSTREAM_SIGNATURE


class SingleDecodeJWTManager(JWTManager):
    def _decode_jwt_from_config(self, encoded_token: str, csrf_value=None, allow_expired: bool = False) -> dict:
        if not _UPSTREAM_MATCHES or self._decode_key_callback is not default_decode_key_callback:
            return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        kwargs = {
            "algorithms": config.decode_algorithms,
            "audience": config.decode_audience,
            "csrf_value": csrf_value,
            "encoded_token": encoded_token,
            "identity_claim_key": config.identity_claim_key,
            "issuer": config.decode_issuer,
            "leeway": config.leeway,
            "secret": config.decode_key,  # what default_decode_key_callback returns
            "verify_aud": config.decode_audience is not None,
            "verify_sub": config.verify_sub,
        }
        try:
            return _decode_jwt(**kwargs, allow_expired=allow_expired)
        except pyjwt.ExpiredSignatureError as e:
            # As upstream: the expired-token handler receives the token's header and claims. The
            # signature was verified before the expiry was looked at.
            e.jwt_header = pyjwt.get_unverified_header(encoded_token)  # type: ignore[attr-defined]
            e.jwt_data = _decode_jwt(**kwargs, allow_expired=True)  # type: ignore[attr-defined]
            raise
