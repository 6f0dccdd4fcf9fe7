"""Rate-limit keys, the per-category limits of DESIGN.md, and the counting strategy.

Limits are counted in Redis (shared by every gunicorn worker) per authenticated user, or per
client IP for anonymous calls. The default limits run in `before_request`, before any
`@jwt_required`, so the key function verifies the token itself when the route has not yet.
"""
from __future__ import annotations

import time

from flask import current_app, has_request_context, request
from flask_jwt_extended import get_jwt_identity, verify_jwt_in_request
from flask_limiter.util import get_remote_address
from limits import RateLimitItem
from limits.storage import RedisStorage
from limits.strategies import STRATEGIES, FixedWindowRateLimiter
from limits.util import WindowStats

# Where flask-limiter writes its Retry-After (RATELIMIT_HEADER_RETRY_AFTER); security.py turns it
# into Retry-After on 429s only.
RATE_LIMIT_RETRY_AFTER = "X-RateLimit-Retry-After"

# Per-request facts, kept in the WSGI environ: unlike `g`, it never outlives its request (an
# app context pushed around several requests, as tests do, shares one `g`).
VERIFIED_SUBJECT = "wallet_api.verified_subject"
WINDOWS = "wallet_api.ratelimit_windows"

STRATEGY = "fixed-window-with-stats"


def remember_verified_subject(subject: str | None) -> None:
    """Called when this request's access token passed verification (auth/tokens.py)."""
    if has_request_context():
        request.environ[VERIFIED_SUBJECT] = subject


def rate_limit_key() -> str:
    # Decorated limits run inside the route's jwt_required, which has verified the token already:
    # a second verification would decode it again for nothing.
    identity = request.environ.get(VERIFIED_SUBJECT)
    if identity is None:
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


class FixedWindowWithStats(FixedWindowRateLimiter):
    """flask-limiter's fixed window, whose hit also answers the response headers.

    flask-limiter writes X-RateLimit-Remaining and -Reset from `get_window_stats`, a GET and a TTL
    after the hit: two more Redis round trips on every limited request, for a count the hit's
    INCRBY had just returned. Here the hit's script returns the count and the TTL together and
    the request keeps them; `get_window_stats` answers from them, and reads Redis only for a
    limit this request did not hit (a `test`-only limit).
    """

    # limits' own incr_expire.lua, returning the key's time to live (in ms: TTL's whole seconds are
    # rounded, so the window's end computed from them moves by a second between requests) with the count.
    SCRIPT = """
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", KEYS[1], amount)
if tonumber(current) == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("pttl", KEYS[1])}
"""

    def __init__(self, storage):
        super().__init__(storage)
        self._script = (storage.get_connection().register_script(self.SCRIPT)
                        if isinstance(storage, RedisStorage) else None)

    def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        if self._script is None or not has_request_context():
            return super().hit(item, *identifiers, cost=cost)
        key = item.key_for(*identifiers)
        current, ttl_ms = self._script([self.storage.prefixed_key(key)], [item.get_expiry(), cost])
        request.environ.setdefault(WINDOWS, {})[key] = WindowStats(
            time.time() + max(int(ttl_ms), 0) / 1000, max(0, item.amount - int(current)))
        return int(current) <= item.amount

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        if has_request_context():
            stats = request.environ.get(WINDOWS, {}).get(item.key_for(*identifiers))
            if stats is not None:
                return stats
        return super().get_window_stats(item, *identifiers)


# flask-limiter looks strategies up by name in this registry (RATELIMIT_STRATEGY).
STRATEGIES.setdefault(STRATEGY, FixedWindowWithStats)
