"""Access tokens (JWT, 15 minutes) and how auth failures look to clients.

Refresh tokens are not JWTs: they are opaque random strings stored only as an HMAC under
JWT_REFRESH_SECRET (see auth/service.py), so a stolen database copy cannot mint sessions and
a rotated token can be recognised when it is replayed.
"""
from __future__ import annotations

from functools import wraps

from flask_jwt_extended import JWTManager, create_access_token, get_jwt, verify_jwt_in_request

from wallet_api.errors import Forbidden, envelope
from wallet_api.logging import bind_user
from wallet_api.ratelimit import remember_verified_subject


def issue_access_token(*, user_id, role: str) -> str:
    # PyJWT >= 2.11 verifies that `sub` is a string; an int identity fails every later request.
    return create_access_token(identity=str(user_id), additional_claims={"role": role})


def register_jwt_handlers(jwt: JWTManager) -> None:
    def unauthorized(message: str, error: str = "unauthorized"):
        return envelope(401, message, error=error), 401, {"WWW-Authenticate": "Bearer"}

    jwt.unauthorized_loader(lambda reason: unauthorized("Missing or malformed Authorization header."))
    jwt.invalid_token_loader(lambda reason: unauthorized("Invalid access token.", "invalid_token"))
    jwt.expired_token_loader(lambda header, payload: unauthorized("Access token expired.", "token_expired"))
    jwt.revoked_token_loader(lambda header, payload: unauthorized("Access token revoked.", "token_revoked"))
    jwt.needs_fresh_token_loader(lambda header, payload: unauthorized("Fresh token required."))
    jwt.user_lookup_error_loader(lambda header, payload: unauthorized("Unknown user.", "invalid_token"))
    jwt.token_verification_loader(_verified)
    jwt.token_verification_failed_loader(
        lambda header, payload: unauthorized("Access token has no expiry.", "invalid_token"))


def _verified(_header: dict, payload: dict) -> bool:
    """Called once the token's signature and expiry are checked."""
    # PyJWT checks `exp` only when present: a token minted without one would never expire.
    if "exp" not in payload:
        return False
    bind_user(payload.get("sub"))  # the rest of the request's log lines name the user
    remember_verified_subject(payload.get("sub"))  # the rate limits count it without decoding again
    return True


def admin_required(fn):
    """Require a valid access token whose role is ADMIN (401 without a token, 403 with a user's)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        verify_jwt_in_request()
        if get_jwt().get("role") != "ADMIN":
            raise Forbidden("Administrator role required.")
        return fn(*args, **kwargs)

    wrapper.required_role = "ADMIN"  # the OpenAPI document declares 403 from it (wallet_api/openapi.py)
    return wrapper
