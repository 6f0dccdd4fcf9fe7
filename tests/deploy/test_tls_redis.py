"""Heroku Redis speaks TLS with a self-signed certificate. With REDIS_TLS_VERIFY=false the app (its
queues, readiness check and rate limiter), a real worker process pool and the scheduler all work
against such a server; without it, the certificate is verified and refused. The server is Redis's own
TLS where the machine's redis-server has it, else a TLS terminator in front of a plain one (tls_redis.py)."""
import signal
import subprocess
import time
from decimal import Decimal

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue
from rq_scheduler import Scheduler

from tests.deploy.tls_redis import TlsRedis
from tests.onramp.support import (ROOT, finish, kill_tree, moonpay_event, post_webhook, rq_worker_command,
                                  start_worker_process, wait_for, worker_env)
from wallet_api import create_app
from wallet_api.config import load_settings
from wallet_api.extensions import db
from wallet_api.queues import WEBHOOKS, redis_from_settings

pytestmark = pytest.mark.slow

HEROKU_STYLE = {"REDIS_TLS_VERIFY": "false"}


@pytest.fixture
def tls_redis(tmp_path):
    redis = TlsRedis(tmp_path).start()
    yield redis
    redis.kill()


@pytest.fixture
def env_on(settings, tls_redis):
    """env_on(**extra) -> the environment of a process of this test run whose Redis is the TLS one."""
    return lambda **extra: worker_env(settings, REDIS_URL=tls_redis.url, **extra)


@pytest.fixture
def tls_app(env_on):
    app = create_app(load_settings(env_on(**HEROKU_STYLE, RATELIMIT_ENABLED="true", RATELIMIT_WALLET_READ="3/minute")))
    yield app
    with app.app_context():
        db.engine.dispose()


def test_the_app_and_a_worker_pool_credit_a_webhook_through_tls_redis(
        tls_app, tls_redis, settings, user, onramp, auth_headers, books):
    client = tls_app.test_client()
    ready = client.get("/ready").get_json()
    assert ready["checks"]["redis"] == {"ok": True, "detail": "reachable"}

    # The limiter counts in the TLS Redis: the fourth read in a minute is refused.
    headers = auth_headers(user)
    assert [client.get("/wallets", headers=headers).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert tls_redis.client().keys("*wallet_api:ratelimit*")

    onramp_id, wallet_id = onramp(user, "ETH")
    response = post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, amount="0.75"))
    assert response.status_code == 200
    assert Queue(WEBHOOKS, connection=tls_redis.client()).count == 1  # queued over TLS

    # Two processes: RQ's pool rebuilds each child's connection from the parent's options.
    worker = start_worker_process(settings, REDIS_URL=tls_redis.url, **HEROKU_STYLE,
                                  command=rq_worker_command(settings, burst=True, processes=2))
    output = finish(worker)
    assert worker.returncode == 0, output
    assert books.balance(wallet_id) == Decimal("0.75") and books.credits(wallet_id) == 1
    assert books.events()[0]["outcome"] == "credited"


def test_the_certificate_is_verified_by_default_and_a_self_signed_one_refused(env_on, tls_redis):
    settings = load_settings(env_on())
    assert settings.redis_tls_verify is True
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        redis_from_settings(settings).ping()
    app = create_app(settings)
    try:
        response = app.test_client().get("/ready")
        assert response.status_code == 503
        assert response.get_json()["checks"]["redis"]["ok"] is False
    finally:
        with app.app_context():
            db.engine.dispose()


def test_the_scheduler_over_tls_stops_on_sigterm_and_the_next_one_reasserts_the_schedule(env_on, tls_redis):
    scheduler = Scheduler(connection=tls_redis.client())
    first = _start_scheduler(env_on)
    try:
        wait_for(lambda: "periodic-webhook-retry" in scheduler, timeout=30, message="the schedule over TLS")
        output, seconds = _sigterm(first)
    finally:
        kill_tree(first.pid)
    assert first.returncode == 0, output
    assert seconds < 10, f"the scheduler took {seconds:.1f}s to stop"  # Heroku kills after 30 s
    assert "scheduler_stopped" in output

    scheduler.cancel("periodic-webhook-retry")  # lost while no scheduler ran
    second = _start_scheduler(env_on)
    try:
        wait_for(lambda: "periodic-webhook-retry" in scheduler, timeout=30, message="the schedule re-asserted")
    finally:
        output, _ = _sigterm(second)
        kill_tree(second.pid)
    assert second.returncode == 0, output


def _start_scheduler(env_on) -> subprocess.Popen:
    return subprocess.Popen([str(ROOT / "bin" / "start-scheduler")], cwd=ROOT, env=env_on(**HEROKU_STYLE,
                                                                                         LOG_LEVEL="INFO"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _sigterm(process: subprocess.Popen) -> tuple[str, float]:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=30)
    return output, time.monotonic() - started
