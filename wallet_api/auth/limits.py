"""The limits of signing in, shared by the API's auth routes and the operator console's sign-in."""
from __future__ import annotations

import hashlib

from flask import request

from wallet_api.extensions import limiter
from wallet_api.ratelimit import limit_for


def login_account_key() -> str:
    """The account a login names (JSON body or form), hashed: failures count per account, whatever
    the client's IP."""
    body = request.get_json(silent=True) if request.is_json else request.form
    email = body.get("email") if hasattr(body, "get") else None
    if not isinstance(email, str) or not email.strip():
        return "login-account:none"  # never charged: only a well-formed login can fail with 401
    return "login-account:" + hashlib.sha256(email.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()


# One budget for every sign-in route (the API's auth routes and the console's sign-in): an IP
# refused at one is refused at the others too.
auth_budget = limiter.shared_limit(limit_for("auth"), scope="auth")

# Only failed logins (401) are charged, so the owner logging in correctly costs nothing; once an
# account has used its budget every login for it gets 429 until the window ends, whoever sends it.
login_failures = limiter.shared_limit(limit_for("login_failures"), scope="login-failures",
                                      key_func=login_account_key,
                                      deduct_when=lambda response: response.status_code == 401,
                                      error_message="Too many failed logins for this account.")
