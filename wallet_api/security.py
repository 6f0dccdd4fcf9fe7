"""What every response promises a browser, a cache and a proxy, and production's HTTPS rule.

- Production serves the API over HTTPS only. Behind the trusted proxies the scheme is the one the
  outermost proxy saw (X-Forwarded-Proto, see client_address.py). Plain HTTP is redirected (308, so
  a client cannot be downgraded silently into repeating a POST over HTTP) for GET and HEAD and
  refused (400) otherwise: a body already sent in clear must not be acted on. /health and /ready
  stay reachable over plain HTTP because platform probes call them from inside the network, and so
  does /metrics for a scraper on the private network: it serves counts, never user data, and a
  redirect would not have kept its token out of the plain request anyway (docs/OBSERVABILITY.md).
- Every response is `no-store` unless it set its own caching (static files): tokens, balances and
  ledgers must not sit in a shared or browser cache.
- The JSON API needs no browser capability at all, so its Content-Security-Policy allows nothing;
  the self-hosted API docs (/docs) may load their own scripts and styles and nothing from another
  origin. A blueprint that sets its own headers (the console) keeps them.
- Retry-After means "you were refused, come back then". flask-limiter would put its own on every
  response (and overwrite the one a 409 or 503 sets), so it writes to RATE_LIMIT_RETRY_AFTER instead,
  which becomes Retry-After on its 429s only.
"""
from __future__ import annotations

from flask import Flask, Response, redirect, request

from wallet_api.config import Settings
from wallet_api.errors import envelope
from wallet_api.ratelimit import RATE_LIMIT_RETRY_AFTER

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
HSTS = "max-age=31536000; includeSubDomains"
PLAIN_HTTP_PATHS = frozenset({"/health", "/ready", "/metrics"})
SAME_EVERYWHERE = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def init_security(app: Flask, settings: Settings) -> None:
    """Register the HTTPS rule and the response headers.

    Call before any extension registers its own hooks: after_request functions run in reverse order
    of registration, so these run last and see the headers flask-limiter and flask-cors added.
    """
    if settings.is_production:
        app.before_request(_require_https)
    app.after_request(_secure_response_headers(hsts=settings.is_production))


def _require_https():
    if request.scheme == "https" or request.path in PLAIN_HTTP_PATHS:
        return None
    if request.method in ("GET", "HEAD"):
        return redirect(request.url.replace("http://", "https://", 1), code=308)
    body = envelope(400, "HTTPS is required; send this request to the https:// address.",
                    error="https_required")
    return body, 400


def _secure_response_headers(*, hsts: bool):
    def apply(response: Response) -> Response:
        headers = response.headers
        for name, value in SAME_EVERYWHERE.items():
            headers.setdefault(name, value)
        headers.setdefault("Content-Security-Policy", DOCS_CSP if _is_docs(request.path) else API_CSP)
        headers.setdefault("Cache-Control", "no-store")
        if hsts:
            headers["Strict-Transport-Security"] = HSTS
        # The answer depends on the Origin header whenever CORS is configured; say so to caches.
        response.vary.add("Origin")
        rate_limit_retry_after = headers.pop(RATE_LIMIT_RETRY_AFTER, None)
        if response.status_code == 429 and rate_limit_retry_after is not None:
            headers["Retry-After"] = rate_limit_retry_after
        return response

    return apply


def _is_docs(path: str) -> bool:
    return path == "/docs" or path.startswith("/docs/")
