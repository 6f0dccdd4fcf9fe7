"""Rate limits while Redis is down or hung: every limit is still enforced, counted in the process's
memory, and no request fails or waits on Redis; once Redis answers again the limits count there.

The app runs in a process of its own: flask-limiter's Limiter is one module global, and the
fallback state these tests drive must not leak into the rest of the suite."""
import json
import os
import subprocess
import sys

import pytest

from tests.onramp.support import ROOT, PrivateRedis

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys, time
from tests.conftest import make_settings
from wallet_api.app import create_app
from wallet_api.config import RateLimits

app = create_app(make_settings(database_url=sys.argv[1], redis_url=sys.argv[2], ratelimit_enabled=True,
                               rate_limits=RateLimits(auth="2/minute")))
client = app.test_client()

def login(ip):
    started = time.monotonic()
    res = client.post("/auth/login", json={"email": "nobody@example.com", "password": "not-the-password"},
                      environ_base={"REMOTE_ADDR": ip})
    return [res.status_code, round(time.monotonic() - started, 3)]

print(json.dumps([login("203.0.113.9") for _ in range(3)]), flush=True)
attempt = 0
while sys.stdin.readline().strip() == "again":
    # flask-limiter looks for its storage again 1, 2, 4, ... s after the last look
    time.sleep(1)
    attempt += 1
    print(json.dumps([login(f"198.51.100.{attempt}")]), flush=True)
"""


def run_app(settings, redis_url: str):
    env = {**os.environ, "APP_ENV": "test", "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, settings.database_url, redis_url], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_answers(process) -> list:
    line = process.stdout.readline()
    assert line, process.stderr.read()
    return json.loads(line)


def test_with_redis_refusing_the_limits_are_counted_in_memory(app, settings, tmp_path):
    redis = PrivateRedis(tmp_path)  # never started: its port refuses
    process = run_app(settings, redis.url)
    try:
        answers = read_answers(process)
        assert [status for status, _ in answers] == [401, 401, 429]  # the limit holds, nothing is a 500
        process.communicate("stop\n", timeout=30)
    finally:
        process.kill()


def test_with_redis_hung_no_request_waits_on_it_and_the_limits_count_in_redis_once_it_answers(
        app, settings, tmp_path):
    redis = PrivateRedis(tmp_path).start()
    try:
        redis.pause()
        process = run_app(settings, redis.url)
        try:
            answers = read_answers(process)
            assert [status for status, _ in answers] == [401, 401, 429]
            assert max(elapsed for _, elapsed in answers) < 3  # one socket timeout at most, never Redis's hang
            redis.resume()
            for attempt in range(1, 11):  # counted in Redis again within the limiter's next looks
                process.stdin.write("again\n")
                process.stdin.flush()
                (after,) = read_answers(process)
                assert after[0] == 401
                if any(f"198.51.100.{attempt}" in key.decode() for key in redis.client().keys("*ratelimit*")):
                    break
            else:
                raise AssertionError("the limits never went back to Redis")
            process.communicate("stop\n", timeout=30)
        finally:
            process.kill()
    finally:
        redis.kill()
