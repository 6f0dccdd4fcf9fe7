"""The periodic schedule is registered once under stable ids, and the worker and scheduler processes
refuse to start on a bad environment."""
import signal
import subprocess

import pytest
from rq_scheduler import Scheduler

from tests.onramp.support import ROOT, finish, kill_tree, wait_for, worker_env
from worker.schedule import PERIODIC_JOBS, PeriodicJob, register_schedule


@pytest.fixture
def scheduler(app, redis_client):  # `app`: Redis is also flushed after the test
    redis_client.flushdb()
    return Scheduler(connection=redis_client)


PERIODIC_IDS = sorted(job.id for job in PERIODIC_JOBS)


def test_every_periodic_job_is_registered_and_webhook_retry_runs_every_five_minutes(scheduler, settings):
    report = register_schedule(scheduler=scheduler, settings=settings)
    assert report == {job_id: "registered" for job_id in PERIODIC_IDS}
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert sorted(jobs) == PERIODIC_IDS
    retry = jobs["periodic-webhook-retry"]
    assert retry.func_name == "worker.jobs.webhook_retry"
    assert retry.meta["interval"] == settings.webhook_retry_interval_seconds == 300
    assert retry.origin == "default"
    assert jobs["periodic-idempotency-purge"].func_name == "worker.jobs.purge_idempotency_keys"


def test_a_restarted_scheduler_does_not_register_twice(scheduler, settings):
    register_schedule(scheduler=scheduler, settings=settings)
    first_runs = dict((job.id, at) for job, at in scheduler.get_jobs(with_times=True))
    assert register_schedule(scheduler=scheduler, settings=settings) == {job_id: "kept" for job_id in PERIODIC_IDS}
    again = dict((job.id, at) for job, at in scheduler.get_jobs(with_times=True))
    assert again == first_runs  # no duplicates, and the next runs are not pushed back by a restart


def test_a_changed_interval_replaces_the_job_under_the_same_id(scheduler, settings):
    register_schedule(scheduler=scheduler, settings=settings)
    changed = settings.replace(webhook_retry_interval_seconds=60)
    report = register_schedule(scheduler=scheduler, settings=changed)
    assert report["periodic-webhook-retry"] == "replaced"
    assert report["periodic-idempotency-purge"] == "kept"
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert sorted(jobs) == PERIODIC_IDS
    assert jobs["periodic-webhook-retry"].meta["interval"] == 60


def test_unknown_periodic_jobs_are_cancelled_and_one_off_jobs_left_alone(scheduler, settings, redis_client):
    import datetime as dt

    old = PeriodicJob(id="periodic-renamed-away", func="worker.jobs.webhook_retry", interval=lambda s: 60)
    register_schedule(scheduler=scheduler, settings=settings, jobs=(*PERIODIC_JOBS, old))
    one_off = scheduler.enqueue_in(dt.timedelta(hours=1), "worker.jobs.webhook_retry")
    report = register_schedule(scheduler=scheduler, settings=settings)
    assert report == {"periodic-renamed-away": "cancelled", **{job_id: "kept" for job_id in PERIODIC_IDS}}
    assert sorted(job.id for job in scheduler.get_jobs()) == sorted([*PERIODIC_IDS, one_off.id])


def test_periodic_ids_are_namespaced():
    with pytest.raises(ValueError):
        PeriodicJob(id="webhook-retry", func="worker.jobs.webhook_retry", interval=lambda s: 60)


@pytest.mark.parametrize("script", ["start-worker", "start-scheduler"])
def test_processes_fail_fast_naming_bad_configuration(settings, script):
    env = worker_env(settings, JWT_SECRET="short", MOONPAY_WEBHOOK_SECRET="")
    env.pop("MOONPAY_SECRET_KEY")
    result = subprocess.run([str(ROOT / "bin" / script)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    for name in ("JWT_SECRET", "MOONPAY_WEBHOOK_SECRET", "MOONPAY_SECRET_KEY"):
        assert name in result.stderr
    assert "short" not in result.stderr  # the message names variables, never their values


@pytest.mark.parametrize("script", ["start-worker", "start-scheduler"])
def test_processes_fail_fast_when_redis_is_unreachable(settings, script):
    env = worker_env(settings, REDIS_URL="redis://127.0.0.1:1/0")
    result = subprocess.run([str(ROOT / "bin" / script)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "Redis" in result.stderr


def test_bin_start_scheduler_registers_then_runs_rqscheduler(settings, scheduler):
    process = subprocess.Popen([str(ROOT / "bin" / "start-scheduler")], cwd=ROOT, env=worker_env(settings),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: "periodic-webhook-retry" in scheduler, timeout=30, message="the schedule")
        # rqscheduler is running (it holds its heartbeat key) and moves the due job onto its queue.
        wait_for(lambda: scheduler.connection.keys("rq:scheduler_instance:*"), timeout=30,
                 message="rqscheduler to start")
        from rq import Queue

        queued = lambda: set(Queue("default", connection=scheduler.connection).job_ids)  # noqa: E731
        wait_for(lambda: queued() == set(PERIODIC_IDS), timeout=30, message="the first runs to be enqueued")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output = finish(process, timeout=15)
        finally:
            kill_tree(process.pid)
    assert "periodic-webhook-retry: registered" in output


def test_sigterm_stops_an_idle_worker_cleanly(settings):
    from tests.onramp.support import start_worker_process

    worker = start_worker_process(settings, burst=False)
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
        assert purge_idempotency_keys() == 1
        assert db.session.scalars(select(IdempotencyRecord.key)).all() == ["fresh"]
