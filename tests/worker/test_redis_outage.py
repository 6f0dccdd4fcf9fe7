"""Workers wait for Redis and carry on after it comes back, instead of exiting: a worker started
while Redis is down, and one whose Redis dies under it, both apply the next webhook once Redis
answers again. PostgreSQL holds every event meanwhile."""
import signal
from decimal import Decimal

import pytest

from tests.onramp.support import (PrivateRedis, finish, kill_tree, moonpay_event, post_webhook, start_worker_process,
                                  wait_for)

pytestmark = pytest.mark.slow


@pytest.fixture
def private_redis(tmp_path):
    redis = PrivateRedis(tmp_path)
    yield redis
    redis.kill()


@pytest.fixture
def app_on(make_settings_app, private_redis):
    return make_settings_app(redis_url=private_redis.url)


def purchase_completed(app, books, user, crypto_wallet, currency):
    """Start a purchase and deliver its completion through `app`; returns the wallet id."""
    from wallet_api.onramp import service

    wallet_id = crypto_wallet(user, currency)
    with app.app_context():
        onramp_id = service.create_session(user_id=user.id, wallet_id=wallet_id, base_currency="usd",
                                           base_amount=Decimal("10")).transaction.id
    assert post_webhook(app.test_client(), moonpay_event(onramp_id=onramp_id, user_id=user.id, moonpay_id=f"mp_{currency}",
                                                         currency=currency.lower(), amount="1")).status_code == 200
    return wallet_id


def stop(worker) -> str:
    worker.send_signal(signal.SIGTERM)
    try:
        return finish(worker, timeout=30)
    finally:
        kill_tree(worker.pid)


def test_a_worker_started_before_redis_works_once_redis_is_up(settings, private_redis, app_on, user, crypto_wallet,
                                                              books, tmp_path):
    log = tmp_path / "worker.log"
    with open(log, "w") as log_file:
        worker = start_worker_process(settings, burst=False, REDIS_URL=private_redis.url, LOG_LEVEL="INFO",
                                      log_file=log_file)
    try:
        wait_for(lambda: "worker_waiting_for_redis" in log.read_text(), timeout=30, message="the worker to wait")
        assert worker.poll() is None
        private_redis.start()
        wallet = purchase_completed(app_on, books, user, crypto_wallet, "ETH")
        wait_for(lambda: books.balance(wallet) == Decimal("1"), timeout=60, message="the credit")
    finally:
        stop(worker)
    assert worker.returncode == 0, log.read_text()


def test_a_worker_whose_redis_dies_waits_and_resumes(settings, private_redis, app_on, user, crypto_wallet, books):
    private_redis.start()
    worker = start_worker_process(settings, burst=False, REDIS_URL=private_redis.url, LOG_LEVEL="INFO")
    try:
        first = purchase_completed(app_on, books, user, crypto_wallet, "ETH")
        wait_for(lambda: books.balance(first) == Decimal("1"), timeout=60, message="the first credit")
        private_redis.kill()
        with pytest.raises(AssertionError):  # still alive after Redis went away
            wait_for(lambda: worker.poll() is not None, timeout=6, message="the worker to exit")
        private_redis.start()  # an empty Redis: the queue is gone, the events are not
        second = purchase_completed(app_on, books, user, crypto_wallet, "BTC")
        wait_for(lambda: books.balance(second) == Decimal("1"), timeout=90, message="the credit after the outage")
    finally:
        output = stop(worker)
    assert worker.returncode == 0, output
    # Noticed and logged, by RQ's dequeue loop or by our restart of it, whichever met the outage first.
    assert "worker_redis_unavailable" in output or "could not connect to Redis" in output
    assert books.credits(first) == books.credits(second) == 1
