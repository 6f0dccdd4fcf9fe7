"""What keeps the console's pages safe in a browser: the signing key, CSRF tokens, response headers.

- The session cookie is signed with a key derived from JWT_SECRET (HMAC-SHA256 of a fixed context
  string), not a setting of its own: JWT_SECRET is already required, checked for strength in
  production and tracked for rotation, every process of a deploy derives the same key, and anyone
  who holds JWT_SECRET can mint admin tokens anyway, so the derivation grants nothing new. Rotating
  JWT_SECRET signs every operator out.
- Every form carries a CSRF token (Flask-WTF's CSRFProtect, checked by the console's own hook,
  never app-wide: the JSON API takes bearer tokens, which a browser never sends by itself).
- Pages are never cached, framed or sniffed, and may load only the console's own stylesheet.
"""
from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from flask import Response
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()

SESSION_KEY_CONTEXT = b"wallet_api/admin/console: session cookie signing key, v1"

# No script at all; styles from the console's static file only (no inline style attributes).
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # CSRFProtect checks the Referer of HTTPS form posts: keep it on same-origin requests.
    "Referrer-Policy": "same-origin",
}


def session_key(jwt_secret: str) -> str:
    """The Flask SECRET_KEY of the console's session cookie, derived from JWT_SECRET."""
    return hmac.new(jwt_secret.encode(), SESSION_KEY_CONTEXT, hashlib.sha256).hexdigest()


def page_headers(response: Response) -> Response:
    """after_request of the console: the headers every page gets (a CSP set app-wide is kept)."""
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    for name, value in PAGE_HEADERS.items():
        response.headers[name] = value
    return response


def safe_next(target: str | None) -> str | None:
    """`target` when it is a path inside the console (where to go after signing in), else None."""
    if not target or "\\" in target or target.startswith("//"):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    if parts.path != "/console" and not parts.path.startswith("/console/"):
        return None
    return target
