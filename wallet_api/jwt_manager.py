"""flask-jwt-extended's JWTManager, remembering the access tokens it has verified.

A client sends the same access token with every request for its 15 minutes, and verifying it cost
0.38-0.48 ms of a transfer's CPU under load, 11-14% of it (docs/PERFORMANCE.md, third pass).
flask-jwt-extended 4.7 decodes each token three times (twice unverified, for a `decode_key_loader`,
then once verified), and PyJWT 2.15 checks each base64url segment character by character in Python
and probes the HMAC key for PEM, SSH and DER forms on every verification.

So each app keeps, per process, the claims of the tokens upstream's full decode accepted: the
exact token text, with the key it was verified with, maps to its claims.

- Only a token that passed every check of the library (signature with the app's key, algorithm,
  `exp`, `nbf`, `iat`, required claims) is remembered. Another text, even one character of the same
  token changed, is verified from scratch.
- A remembered token is still refused once its `exp` (plus `JWT_DECODE_LEEWAY`) has passed: it is
  forgotten and sent down the full path, which raises the usual expired-token error. `nbf` and
  `iat` can only become more valid as time passes.
- Everything after the decode runs on every request as before: the token type, freshness, the
  blocklist hook, and the app's verification callback (which refuses a token without `exp` and
  binds the user to log lines and rate limits).
- Not remembered, and decoded by upstream as is: with a `decode_key_loader` registered (the key
  may then depend on the token, or a user's key may be withdrawn), with a CSRF value, decodes that
  allow expired tokens, and under a flask-jwt-extended whose method has another shape
  (tests/auth/test_jwt_manager.py pins it).
- A changed JWT_SECRET takes a restart, which empties the memory; an entry also carries the key
  it was verified with and is ignored under another one.
- At most MAX_TOKENS per app and process (a few MB); the oldest are forgotten first.
"""
from __future__ import annotations

import datetime as dt
import inspect
import threading
import time

from flask import Flask, current_app
from flask_jwt_extended import JWTManager
from flask_jwt_extended.config import config
from flask_jwt_extended.default_callbacks import default_decode_key_callback

# The upstream method this class wraps, as it was when this was written (4.7.4).
UPSTREAM_SIGNATURE = "(self, encoded_token: str, csrf_value=None, allow_expired: bool = False) -> dict"
_UPSTREAM_MATCHES = str(inspect.signature(JWTManager._decode_jwt_from_config)) == UPSTREAM_SIGNATURE
MAX_TOKENS = 4096
_EXTENSION = "wallet_api.verified_tokens"


class VerifiedTokens:
    """Token text -> (key, claims, valid until): bounded, oldest out first, safe across threads."""

    def __init__(self, max_tokens: int = MAX_TOKENS):
        self.max_tokens = max_tokens
        self._tokens: dict[str, tuple[str, dict, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, token: str, key: str, now: float) -> dict | None:
        found = self._tokens.get(token)
        if found is None:
            return None
        verified_with, claims, valid_until = found
        if verified_with != key or now >= valid_until:
            self._tokens.pop(token, None)
            return None
        return dict(claims)  # the caller's own copy: nothing it does reaches the next request

    def remember(self, token: str, key: str, claims: dict, leeway: float) -> None:
        expires = claims.get("exp")
        if isinstance(expires, bool) or not isinstance(expires, (int, float)):
            return  # the app refuses such a token anyway
        with self._lock:
            while len(self._tokens) >= self.max_tokens:
                self._tokens.pop(next(iter(self._tokens)))
            self._tokens[token] = (key, dict(claims), expires + leeway)


class RememberingJWTManager(JWTManager):
    def init_app(self, app: Flask, add_context_processor: bool = False) -> None:
        super().init_app(app, add_context_processor)
        app.extensions[_EXTENSION] = VerifiedTokens()

    def _decode_jwt_from_config(self, encoded_token: str, csrf_value=None, allow_expired: bool = False) -> dict:
        tokens = current_app.extensions.get(_EXTENSION)
        if (tokens is None or csrf_value is not None or allow_expired or not _UPSTREAM_MATCHES
                or self._decode_key_callback is not default_decode_key_callback):
            return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        key = config.decode_key
        claims = tokens.get(encoded_token, key, time.time())
        if claims is None:
            claims = super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
            leeway = config.leeway
            tokens.remember(encoded_token, key, claims,
                            leeway.total_seconds() if isinstance(leeway, dt.timedelta) else leeway)
        return claims
