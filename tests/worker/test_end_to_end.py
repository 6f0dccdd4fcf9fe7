"""Signed webhook -> 200 -> a real RQ worker process -> the wallet is credited exactly once, whatever
the number of deliveries, worker processes, crashes or lost queues."""
import datetime as dt
import signal
import subprocess
from decimal import Decimal

import pytest
from rq import Queue

from tests.onramp.support import (ROOT, RowLock, backend_alive, children_of, deliver_concurrently, finish, kill_tree,
                                  moonpay_event, post_webhook, start_worker_process, to_json, wait_for,
                                  worker_env)
from wallet_api.db_types import utcnow
from wallet_api.onramp.retry_job import run_webhook_maintenance
from wallet_api.queues import DEFAULT, WEBHOOKS

pytestmark = pytest.mark.slow


@pytest.fixture
def purchase(user, onramp):
    onramp_id, wallet_id = onramp(user, "ETH")
    return dict(onramp_id=onramp_id, user_id=user.id, wallet_id=wallet_id)


def completed(purchase, **kwargs):
    return moonpay_event(onramp_id=purchase["onramp_id"], user_id=purchase["user_id"], amount="0.75", **kwargs)


def test_bin_start_worker_drains_every_queue_and_credits_once(client, purchase, settings, books, redis_client):
    assert post_webhook(client, completed(purchase)).status_code == 200
    # A periodic job on the other queue: the worker consumes every queue the app enqueues to.
    Queue(DEFAULT, connection=redis_client).enqueue("worker.jobs.webhook_retry")
    process = subprocess.Popen([str(ROOT / "bin" / "start-worker"), "--burst"], cwd=ROOT, env=worker_env(settings),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = finish(process)
    assert process.returncode == 0, output

    assert books.balance(purchase["wallet_id"]) == Decimal("0.75"), output
    assert books.credits(purchase["wallet_id"]) == 1
    assert books.onramp(purchase["onramp_id"])["status"] == "completed"
    (event,) = books.events()
    assert (event["status"], event["outcome"]) == ("processed", "credited")
    assert Queue(WEBHOOKS, connection=redis_client).count == 0
    assert Queue(DEFAULT, connection=redis_client).count == 0


def test_five_concurrent_deliveries_of_one_event_credit_once(app, purchase, books, run_jobs):
    codes = [res.status_code for res in deliver_concurrently(app, to_json(completed(purchase)))]
    assert codes == [200] * 5
    run_jobs()
    assert books.balance(purchase["wallet_id"]) == Decimal("0.75")
    assert books.credits(purchase["wallet_id"]) == 1


def test_two_deliveries_on_two_concurrent_worker_processes_credit_once(client, purchase, settings, books):
    # Two distinct events announce the same completion (e.g. transaction_created and _updated).
    post_webhook(client, completed(purchase, event_type="transaction_created"))
    post_webhook(client, completed(purchase, event_type="transaction_updated"))
    assert books.count("webhook_events") == 2

    workers = [start_worker_process(settings, burst=False) for _ in range(2)]
    try:
        with RowLock(settings, "onramp_transactions", purchase["onramp_id"]) as lock:
            # Each worker is inside the transaction of one event, holding its row, queued on ours.
            wait_for(lambda: len(lock.waiting_backends()) == 2, timeout=30, message="both workers blocked")
        wait_for(lambda: all(e["status"] == "processed" for e in books.events()), timeout=30,
                 message="both events to be processed")
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        outputs = [finish(w) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs

    assert books.balance(purchase["wallet_id"]) == Decimal("0.75")
    assert books.credits(purchase["wallet_id"]) == 1
    assert sorted(e["outcome"] for e in books.events()) == ["already_completed", "credited"]


def test_a_flushed_queue_is_recovered_by_the_sweeper(client, app, purchase, settings, books, redis_client, run_jobs):
    post_webhook(client, completed(purchase))
    redis_client.flushdb()  # Redis lost everything
    assert run_jobs() is False
    assert books.events()[0]["status"] == "pending"

    stale = settings.webhook_stale_after_seconds
    with app.app_context():
        early = run_webhook_maintenance(now=utcnow() + dt.timedelta(seconds=stale - 5))
        assert (early.retried, early.swept) == (0, 0)  # not stale yet: its job may still be on the way
        late = run_webhook_maintenance(now=utcnow() + dt.timedelta(seconds=stale + 1))
        assert (late.retried, late.swept) == (0, 1)
    assert books.events()[0]["enqueue_count"] == 2
    assert run_jobs() is True
    assert books.balance(purchase["wallet_id"]) == Decimal("0.75")
    assert books.credits(purchase["wallet_id"]) == 1


def test_a_worker_killed_mid_job_loses_nothing_and_doubles_nothing(client, app, purchase, settings, books):
    post_webhook(client, completed(purchase))
    lock = RowLock(settings, "onramp_transactions", purchase["onramp_id"]).__enter__()
    try:
        worker = start_worker_process(settings)
        # The job holds the event row and waits on our lock: it is mid-transaction. Kill -9 everything.
        (orphan_backend,) = wait_for(lock.waiting_backends, timeout=30, message="the job to block")
        children = children_of(worker.pid)  # RQ's scheduler; the job itself runs in the worker
        kill_tree(worker.pid, signal.SIGKILL)  # as when a dyno dies
        finish(worker, timeout=10)
        assert worker.returncode == -signal.SIGKILL
        wait_for(lambda: all(_is_gone(child) for child in children), timeout=10, message="its children to die")
    finally:
        lock.release()
    # The dead job's backend never commits: it is dropped once it tries to answer its gone client.
    wait_for(lambda: not backend_alive(settings, orphan_backend), timeout=30, message="the orphaned backend to end")
    event = books.events()[0]
    assert (event["status"], event["attempts"]) == ("pending", 0)
    assert books.credits(purchase["wallet_id"]) == 0

    with app.app_context():
        swept = run_webhook_maintenance(now=utcnow() + dt.timedelta(seconds=settings.webhook_stale_after_seconds + 1))
    assert swept.swept == 1
    survivor = start_worker_process(settings)
    output = finish(survivor)
    assert survivor.returncode == 0, output
    assert books.balance(purchase["wallet_id"]) == Decimal("0.75")
    assert books.credits(purchase["wallet_id"]) == 1
    assert books.events()[0]["status"] == "processed"


def _is_gone(pid: int) -> bool:
    """Dead (a zombie waiting for a reaper counts: it runs no code)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
