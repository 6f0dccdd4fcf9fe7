"""What a limited request costs: one Redis command for its limit, one verification of its token.

flask-limiter reads X-RateLimit-Remaining and -Reset back from Redis after the hit (GET and TTL);
the app's strategy (wallet_api/ratelimit.py) takes them from the hit's own reply. These tests
watch the real Redis with MONITOR and count the token verifications of real requests.
"""
import threading
import time

import pytest
from redis import Redis

from wallet_api.config import RateLimits
from wallet_api.extensions import db


@pytest.fixture
def limited_app(make_settings_app):
    limited = make_settings_app(ratelimit_enabled=True, rate_limits=RateLimits(wallet_read="5/minute"))
    yield limited
    with limited.app_context():
        db.engine.dispose()


class RedisCommands:
    """The commands the Redis server runs on one db, seen through MONITOR."""

    def __init__(self, url: str):
        self.redis = Redis.from_url(url)
        self.db = self.redis.connection_pool.connection_kwargs.get("db", 0)
        self.seen: list[str] = []
        self._monitor = self.redis.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self):
        try:
            for command in self._monitor.listen():
                # Commands a Lua script runs are reported too (client_type "lua"); the client sent one.
                if command.get("db") == self.db and command.get("client_type") != "lua":
                    self.seen.append(command["command"])
        except Exception:  # the connection closed by stop()
            pass

    def mark(self) -> str:
        """A command of our own, to know when everything sent before it has been seen."""
        marker = f"monitor-mark-{time.monotonic_ns()}"
        self.redis.exists(marker)
        deadline = time.monotonic() + 5
        while not any(marker in command for command in self.seen):
            assert time.monotonic() < deadline, "MONITOR did not report the marker"
            time.sleep(0.01)
        return marker

    def between(self, start: str, end: str) -> list[str]:
        commands = self.seen
        first = next(i for i, c in enumerate(commands) if start in c)
        last = next(i for i, c in enumerate(commands) if end in c)
        return commands[first + 1:last]

    def stop(self):
        self._monitor.connection.disconnect()
        self.redis.close()


@pytest.fixture
def redis_commands(settings):
    watcher = RedisCommands(settings.redis_url)
    yield watcher
    watcher.stop()


def test_a_limited_request_sends_one_redis_command_and_its_headers_count_down(
        limited_app, auth_headers, make_user, redis_commands):
    client, me = limited_app.test_client(), make_user()
    headers = auth_headers(me)
    start = redis_commands.mark()
    first = client.get("/wallets", headers=headers)
    end = redis_commands.mark()
    assert first.status_code == 200
    limit_commands = [c for c in redis_commands.between(start, end) if "ratelimit" in c]
    assert len(limit_commands) == 1 and limit_commands[0].split()[0].strip('"').upper() in ("EVALSHA", "EVAL")

    later = [client.get("/wallets", headers=headers) for _ in range(5)]
    assert [r.status_code for r in later] == [200] * 4 + [429]
    assert first.headers["X-RateLimit-Limit"] == "5"
    assert [r.headers["X-RateLimit-Remaining"] for r in [first, *later]] == ["4", "3", "2", "1", "0", "0"]
    resets = {int(r.headers["X-RateLimit-Reset"]) for r in [first, *later]}
    # One window, ending within the minute. The header is whole seconds, so a window ending a few
    # milliseconds from a second's boundary may be written either side of it.
    assert max(resets) - min(resets) <= 1 and 0 < max(resets) - time.time() <= 61
    assert 0 < int(later[-1].headers["Retry-After"]) <= 61


def test_headers_come_from_the_counter_in_redis(limited_app, auth_headers, make_user, settings):
    """The count and the reset are the window's in Redis, not a per-process guess."""
    client, me = limited_app.test_client(), make_user()
    first = client.get("/wallets", headers=auth_headers(me))
    redis = Redis.from_url(settings.redis_url)
    [key] = [k for k in redis.keys("*ratelimit*") if f"user:{me.id}".encode() in k]
    redis.incrby(key, 2)  # two requests served by another process in the same window
    second = client.get("/wallets", headers=auth_headers(me))
    assert (first.headers["X-RateLimit-Remaining"], second.headers["X-RateLimit-Remaining"]) == ("4", "1")
    assert abs(int(second.headers["X-RateLimit-Reset"]) - (time.time() + redis.ttl(key))) <= 2


def test_the_token_is_verified_once_per_limited_request(limited_app, auth_headers, make_user, monkeypatch):
    import wallet_api.auth.tokens as tokens

    verified = []
    bind_user = tokens.bind_user
    monkeypatch.setattr(tokens, "bind_user", lambda subject: (verified.append(subject), bind_user(subject)))
    client, me, other = limited_app.test_client(), make_user(), make_user()
    assert client.get("/wallets", headers=auth_headers(me)).status_code == 200
    assert verified == [str(me.id)]
    # Counted per user all the same: the other user's budget is untouched.
    res = client.get("/wallets", headers=auth_headers(other))
    assert res.headers["X-RateLimit-Remaining"] == "4" and verified == [str(me.id), str(other.id)]


def test_an_invalid_token_is_counted_by_address(limited_app, make_user, settings):
    """A token that fails verification never names a user to the limiter: its request counts against
    the client's address."""
    client, me = limited_app.test_client(), make_user()
    forged = {"Authorization": "Bearer " + "e30.e30.c2ln"}  # {}.{}.sig: not signed with our key
    res = client.post("/auth/login", json={"email": me.email, "password": "wrong"}, headers=forged,
                      environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert res.status_code == 401
    keys = [k.decode() for k in Redis.from_url(settings.redis_url).keys("*ratelimit*")]
    assert any("ip:203.0.113.9/auth" in k for k in keys)
    assert not any("user:" in k for k in keys)
