"""Rate-limit keys and the per-category limits of DESIGN.md.

Limits are counted in Redis (shared by every gunicorn worker) per authenticated user, or per
client IP for anonymous calls. The default limits run in `before_request`, before any
`@jwt_required`, so the key function verifies the token itself.
"""
from flask import current_app
from flask_jwt_extended import get_jwt_identity, verify_jwt_in_request
from flask_limiter.util import get_remote_address

# Where flask-limiter writes its Retry-After (RATELIMIT_HEADER_RETRY_AFTER); security.py turns it
# into Retry-After on 429s only.
RATE_LIMIT_RETRY_AFTER = "X-RateLimit-Retry-After"


def rate_limit_key() -> str:
    try:
        verify_jwt_in_request(optional=True)
        identity = get_jwt_identity()
    except Exception:  # an invalid token is rejected later by the route; count it by IP here
        identity = None
    return f"user:{identity}" if identity else f"ip:{get_remote_address()}"


def limit_for(category: str):
    """A callable limit, read from settings per request so tests and env vars can change it."""

    def provider() -> str:
        return getattr(current_app.config["SETTINGS"].rate_limits, category)

    return provider

