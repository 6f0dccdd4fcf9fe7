"""The periodic schedule is registered once under stable ids and re-asserted by the scheduler process
(so a Redis that lost its data gets it back), and the worker and scheduler processes refuse to start
on a bad environment."""
import datetime as dt
import os
import signal
import subprocess
import time

import pytest
from rq import Queue
from rq_scheduler import Scheduler

from tests.onramp.support import ROOT, finish, kill_tree, wait_for, worker_env
from sqlalchemy import text

from wallet_api.extensions import db
from wallet_api.jobs.catalog import PERIODIC_JOBS, JobSpec
from worker.schedule import register_schedule


@pytest.fixture
def scheduler(app, redis_client):  # `app`: Redis is also flushed after the test
    redis_client.flushdb()
    return Scheduler(connection=redis_client)


# Enabled by default: all but the jobs that need a setting (ALERT_WEBHOOK_URL, BACKUP_ENCRYPTION_KEY).
ENABLED_IDS = sorted(job.scheduler_id for job in PERIODIC_JOBS if job.name not in ("alert-notifications", "backup"))


def test_every_enabled_periodic_job_is_registered_with_its_interval(scheduler, settings):
    report = register_schedule(scheduler=scheduler, settings=settings)
    assert report == {job_id: "registered" for job_id in ENABLED_IDS}
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert sorted(jobs) == ENABLED_IDS == sorted(["periodic-wallet-reconciliation", "periodic-provider-reconciliation",
                                                  "periodic-webhook-retry", "periodic-idempotency-purge"])
    retry = jobs["periodic-webhook-retry"]
    assert retry.func_name == "worker.jobs.webhook_retry"
    assert retry.meta["interval"] == settings.webhook_retry_interval_seconds == 300
    assert retry.origin == "default"
    assert jobs["periodic-wallet-reconciliation"].meta["interval"] == 900
    assert jobs["periodic-wallet-reconciliation"].timeout == settings.reconciliation_job_timeout_seconds
    assert jobs["periodic-provider-reconciliation"].meta["interval"] == 3600
    assert jobs["periodic-idempotency-purge"].func_name == "worker.jobs.purge_idempotency_keys"


def test_alert_notifications_are_scheduled_only_with_an_alert_webhook_url(scheduler, settings):
    with_url = settings.replace(alert_webhook_url="https://hooks.example.test/alerts")
    assert register_schedule(scheduler=scheduler, settings=with_url)["periodic-alert-notifications"] == "registered"
    assert register_schedule(scheduler=scheduler, settings=settings)["periodic-alert-notifications"] == "cancelled"
    assert "periodic-alert-notifications" not in scheduler


def test_a_restarted_scheduler_does_not_register_twice(scheduler, settings):
    register_schedule(scheduler=scheduler, settings=settings)
    first_runs = dict((job.id, at) for job, at in scheduler.get_jobs(with_times=True))
    assert register_schedule(scheduler=scheduler, settings=settings) == {job_id: "kept" for job_id in ENABLED_IDS}
    again = dict((job.id, at) for job, at in scheduler.get_jobs(with_times=True))
    assert again == first_runs  # no duplicates, and the next runs are not pushed back by a restart


def test_a_changed_interval_replaces_the_job_under_the_same_id(scheduler, settings):
    register_schedule(scheduler=scheduler, settings=settings)
    changed = settings.replace(webhook_retry_interval_seconds=60)
    report = register_schedule(scheduler=scheduler, settings=changed)
    assert report["periodic-webhook-retry"] == "replaced"
    assert report["periodic-idempotency-purge"] == "kept"
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert sorted(jobs) == ENABLED_IDS
    assert jobs["periodic-webhook-retry"].meta["interval"] == 60


def test_unknown_periodic_jobs_are_cancelled_and_one_off_jobs_left_alone(scheduler, settings, redis_client):
    old = JobSpec(name="renamed-away", func="worker.jobs.webhook_retry", description="gone", interval=lambda s: 60)
    register_schedule(scheduler=scheduler, settings=settings, jobs=(*PERIODIC_JOBS, old))
    one_off = scheduler.enqueue_in(dt.timedelta(hours=1), "worker.jobs.webhook_retry")
    report = register_schedule(scheduler=scheduler, settings=settings)
    assert report == {"periodic-renamed-away": "cancelled", **{job_id: "kept" for job_id in ENABLED_IDS}}
    assert sorted(job.id for job in scheduler.get_jobs()) == sorted([*ENABLED_IDS, one_off.id])


def test_a_registration_whose_job_data_was_lost_is_registered_again(scheduler, settings, redis_client):
    register_schedule(scheduler=scheduler, settings=settings)
    redis_client.delete("rq:job:periodic-webhook-retry")  # listed in the schedule, job hash gone
    assert register_schedule(scheduler=scheduler, settings=settings)["periodic-webhook-retry"] == "registered"
    assert scheduler.job_class.fetch("periodic-webhook-retry", connection=redis_client).func_name == \
        "worker.jobs.webhook_retry"


@pytest.mark.parametrize("script", ["start-worker", "start-scheduler"])
def test_a_process_started_while_redis_is_down_waits_for_it_and_stops_on_sigterm(settings, script, tmp_path):
    env = worker_env(settings, REDIS_URL="redis://127.0.0.1:1/0", LOG_LEVEL="INFO")
    marker = "worker_waiting_for_redis" if script == "start-worker" else "scheduler_redis_unavailable"
    log_path = tmp_path / "process.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([str(ROOT / "bin" / script)], cwd=ROOT, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            # Waiting, not exited: its own line says so (a loaded machine may take seconds to import).
            wait_for(lambda: marker in log_path.read_text(), timeout=60, message=marker)
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
        finally:
            kill_tree(process.pid)
    assert process.returncode == 0, log_path.read_text()


def _start_scheduler(settings) -> subprocess.Popen:
    return subprocess.Popen([str(ROOT / "bin" / "start-scheduler")], cwd=ROOT, env=worker_env(settings, LOG_LEVEL="INFO"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        return finish(process, timeout=15)
    finally:
        kill_tree(process.pid)


def test_the_scheduler_process_registers_and_moves_due_jobs_onto_their_queue(settings, scheduler):
    process = _start_scheduler(settings)
    try:
        wait_for(lambda: "periodic-webhook-retry" in scheduler, timeout=30, message="the schedule")
        queued = lambda: set(Queue("default", connection=scheduler.connection).job_ids)  # noqa: E731
        wait_for(lambda: queued() == set(ENABLED_IDS), timeout=30, message="the first runs to be enqueued")
    finally:
        output = _stop(process)
    assert process.returncode == 0, output
    assert "schedule_asserted" in output


def test_a_flushed_redis_gets_its_schedule_back_and_the_sweeper_runs_again(
        app, settings, scheduler, redis_client, run_jobs, user, onramp, books):
    """Losing Redis's data used to lose the schedule until a human restarted the scheduler: a stored
    event whose job vanished then sat pending forever. Now the next loop re-registers everything."""
    from tests.onramp.support import moonpay_event, post_webhook

    onramp_id, wallet_id = onramp(user, "ETH")
    post_webhook(app.test_client(), moonpay_event(onramp_id=onramp_id, user_id=user.id))
    process = _start_scheduler(settings)
    try:
        wait_for(lambda: "periodic-webhook-retry" in scheduler, timeout=30, message="the schedule")
        redis_client.flushdb()  # the event's job, the schedule, everything
        with app.app_context():
            db.session.execute(text("UPDATE webhook_events SET enqueued_at = now() - interval '1 hour'"))
            db.session.commit()
        wait_for(lambda: "periodic-webhook-retry" in scheduler, timeout=30, message="the schedule to come back")
        wait_for(lambda: "periodic-webhook-retry" in Queue("default", connection=redis_client).job_ids,
                 timeout=30, message="the sweeper to be queued again")
    finally:
        _stop(process)
    run_jobs()  # the sweeper re-queues the stale event; its job credits the wallet
    run_jobs()
    assert books.balance(wallet_id) == books.entries_sum(wallet_id) > 0
    runs = books.read("SELECT status, counts FROM job_runs WHERE job_name = 'webhook-retry'")
    assert runs and runs[0]["status"] == "succeeded" and runs[0]["counts"]["swept"] == 1


def test_sigterm_stops_an_idle_worker_cleanly(settings):
    from tests.onramp.support import start_worker_process

    worker = start_worker_process(settings, burst=False, LOG_LEVEL="INFO")
    try:
        # "idle" is set once the signal handlers are installed and the worker waits for jobs.
        wait_for(lambda: worker.poll() is None and _idle(settings), timeout=30, message="the worker to listen")
        worker.send_signal(signal.SIGTERM)
        output = finish(worker, timeout=20)
    finally:
        kill_tree(worker.pid)
    assert worker.returncode == 0, output
    assert "warm shut down" in output.lower()


def _idle(settings) -> bool:
    from redis import Redis
    from rq import Worker

    return any(w.get_state() == "idle" for w in Worker.all(connection=Redis.from_url(settings.redis_url)))


def test_the_purge_job_deletes_only_expired_idempotency_keys(app, user):
    import datetime as dt

    from sqlalchemy import select

    from wallet_api.extensions import db
    from wallet_api.idempotency import IdempotencyRecord
    from worker.jobs import purge_idempotency_keys

    now = dt.datetime.now(dt.timezone.utc)
    with app.app_context():
        for key, expires in (("old", now - dt.timedelta(hours=1)), ("fresh", now + dt.timedelta(hours=1))):
            db.session.add(IdempotencyRecord(user_id=user.id, key=key, method="POST", path="/transfers",
                                             fingerprint="f" * 64, status="completed", expires_at=expires))
        db.session.commit()
        assert purge_idempotency_keys()["purged"] == 1
        assert db.session.scalars(select(IdempotencyRecord.key)).all() == ["fresh"]


def test_a_worker_process_freezes_its_app_once_built(settings):
    """Full collections in a worker process skip the app's objects, built once per process."""
    import sys

    probe = ("import gc\nfrom worker.runner import get_app\nbefore = gc.get_freeze_count()\n"
             "get_app()\nprint(before, gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=worker_env(settings), capture_output=True,
                         text=True, timeout=60)
    before, after = map(int, out.stdout.split()[-2:])
    assert before == 0 and after > 10_000, out.stderr


@pytest.mark.parametrize("nice", [None, "3"])
def test_the_worker_process_and_its_workers_run_below_the_web(settings, nice):
    """WORKER_NICE (default 10) lowers the priority of the supervising process and every worker it forks."""
    from tests.onramp.support import children_of, rq_worker_command, start_worker_process

    extra = {} if nice is None else {"WORKER_NICE": nice}
    worker = start_worker_process(settings, burst=False, command=rq_worker_command(settings, burst=False, processes=2),
                                  **extra)
    try:
        wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=30, message="the pool's two workers")
        expected = os.nice(0) + (10 if nice is None else int(nice))
        pids = (worker.pid, *children_of(worker.pid))
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [expected] * 3
    finally:
        kill_tree(worker.pid)  # (stopping cleanly is test_sigterm_stops_an_idle_worker_cleanly's)
        worker.wait(timeout=30)


def test_a_worker_stopped_as_its_scheduler_starts_does_not_wait_for_it_forever(settings):
    """A dyno stopped as it starts: the worker signals the scheduler process it has just forked, which
    still runs the worker's inherited handler (not its own, that would end it). RQ's own stop then
    joined it forever; the worker asks again, then kills it."""
    from redis import Redis
    from worker.runner import SCHEDULER_STOP_SECONDS, WalletWorker

    connection = Redis.from_url(settings.redis_url)
    # A queue of its own: its scheduler lock is free whatever other tests' workers left in Redis.
    worker = WalletWorker([Queue(f"scheduler-stop-{os.getpid()}", connection=connection)], connection=connection)
    inherited = signal.signal(signal.SIGTERM, lambda *_: None)  # a handler that does not end the process
    try:
        worker._start_scheduler(logging_level="WARNING")  # takes the scheduler locks and forks the scheduler
        process = worker.scheduler._process
        assert process is not None and process.is_alive()
        started = time.monotonic()
        worker.stop_scheduler()
        assert not process.is_alive()
        assert time.monotonic() - started < 3 * SCHEDULER_STOP_SECONDS + 10
    finally:
        signal.signal(signal.SIGTERM, inherited)
        if worker.scheduler and worker.scheduler._process and worker.scheduler._process.is_alive():
            worker.scheduler._process.kill()
        worker.scheduler.release_locks()


def test_a_pool_stopping_is_seen_by_every_worker_it_forked_even_one_its_signal_missed(settings, monkeypatch):
    """RQ stops a pool's workers with a signal each, and a signal that lands while a worker is being forked
    is lost. The pool's stop also sets an event its workers share; a signal to one worker alone (through
    the pool's handler it inherits at first) stops that worker, not the pool."""
    import multiprocessing

    from redis import Redis

    import worker.runner as runner
    from worker.main import WalletWorkerPool

    monkeypatch.setattr(runner, "pool_stopping", None)
    monkeypatch.setattr(runner, "shutdown_requested", __import__("threading").Event())
    pool = WalletWorkerPool(["webhooks"], connection=Redis.from_url(settings.redis_url), num_workers=1)
    fork = multiprocessing.get_context("fork")

    def worker_waits_for_the_stop():  # a worker that never got the pool's signal
        deadline = time.monotonic() + 20
        while not runner.stopping():
            if time.monotonic() > deadline:
                os._exit(1)
            time.sleep(0.01)
        os._exit(0)

    def worker_signalled_alone():  # the pool's handler, inherited, run in a worker
        pool.request_stop()
        os._exit(0 if runner.shutdown_requested.is_set() and not runner.pool_stopping.is_set() else 1)

    alone = fork.Process(target=worker_signalled_alone)
    alone.start()
    alone.join(20)
    assert alone.exitcode == 0 and not runner.stopping()  # the pool goes on

    waiting = fork.Process(target=worker_waits_for_the_stop)
    waiting.start()
    pool.request_stop()  # in the supervisor
    waiting.join(20)
    assert waiting.exitcode == 0 and runner.stopping()
