"""The one wrapper every background job runs in.

    run_job("wallet-reconciliation", reconcile_wallets, trigger="scheduled")

1. No overlap: a PostgreSQL advisory lock per job name, held on a connection of its own for the
   whole run. A second run that finds it taken is recorded as `skipped`, naming the run in
   progress, and returns at once. PostgreSQL drops the lock when that connection dies, so a
   SIGKILLed worker cannot wedge a job; the next run to take the lock marks the dead one's row
   `failed` (abandoned).
2. Every run is a `job_runs` row: trigger, start, end, outcome, the counts the work returned, the
   error. A manual run's row exists from the moment it was requested (`queued`).
3. On an exception the work's transaction is rolled back, the run is recorded as failed, a
   JOB_CRASH alert (critical; job name, error, last successful run) is raised, and the
   exception is re-raised so RQ keeps its own record (and retries, where the job asked for it).
   A warm shutdown is recorded as failed but raises no alert: the next run picks up the work.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable

import structlog
from rq.exceptions import ShutDownImminentException
from sqlalchemy import select, text, update
from sqlalchemy.engine import Connection

from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import raise_alert
from wallet_api.db_types import metadata_json, utcnow
from wallet_api.errors import describe_exception
from wallet_api.extensions import db
from wallet_api.jobs.models import JobRun, RunStatus, Trigger

log = structlog.get_logger(__name__)

# A queued manual run older than this never reached a worker (its queue entry was lost).
QUEUED_LOST_AFTER = dt.timedelta(hours=6)


def run_job(name: str, work: Callable[[], dict | None], *, trigger: str = Trigger.SCHEDULED,
            run_id: uuid.UUID | None = None, requested_by: uuid.UUID | None = None) -> dict:
    """Run `work` as one recorded, non-overlapping run of job `name`; returns its counts and run id."""
    if trigger not in Trigger.ALL:
        raise ValueError(f"unknown trigger {trigger!r}")
    lock = _try_lock(name)
    if lock is None:
        return _skip(name, trigger=trigger, run_id=run_id, requested_by=requested_by)
    try:
        run_id = _start(name, trigger=trigger, run_id=run_id, requested_by=requested_by)
        log.info("job_started", job_name=name, run_id=str(run_id), trigger=trigger)
        try:
            counts = _jsonable(work() or {})
        except BaseException as exc:
            db.session.rollback()
            _fail(name, run_id=run_id, exc=exc)
            raise
        _finish(run_id, status=RunStatus.SUCCEEDED, counts=counts)
        log.info("job_succeeded", job_name=name, run_id=str(run_id), **{k: v for k, v in counts.items()
                                                                        if isinstance(v, (int, str))})
        return {"run_id": str(run_id), "status": RunStatus.SUCCEEDED, **counts}
    finally:
        _unlock(lock, name)


def last_success(name: str) -> JobRun | None:
    """The latest successful run of job `name`."""
    return db.session.scalars(
        select(JobRun).where(JobRun.job_name == name, JobRun.status == RunStatus.SUCCEEDED)
        .order_by(JobRun.finished_at.desc()).limit(1)).first()


# --- internals -------------------------------------------------------------------------------


def _lock_key(name: str) -> str:
    return f"wallet_api.job:{name}"


def _try_lock(name: str) -> Connection | None:
    """A connection of our own holding the job's advisory lock, or None when another run holds it."""
    connection = db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        taken = connection.execute(text("SELECT pg_try_advisory_lock(hashtext(:key))"),
                                   {"key": _lock_key(name)}).scalar_one()
    except BaseException:
        connection.invalidate()
        connection.close()
        raise
    if taken:
        return connection
    connection.close()
    return None


def _unlock(connection: Connection, name: str) -> None:
    try:
        connection.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": _lock_key(name)})
    except Exception:  # noqa: BLE001 - the connection is going away: PostgreSQL drops the lock with it
        connection.invalidate()
        log.warning("job_lock_release_failed", job_name=name)
    finally:
        connection.close()


def _start(name: str, *, trigger: str, run_id: uuid.UUID | None, requested_by: uuid.UUID | None) -> uuid.UUID:
    """Record the run as running (creating its row unless it was queued), and close the rows of runs
    that can no longer be running: we hold the lock, so whoever ran them is gone."""
    now = utcnow()
    others = (JobRun.job_name == name) & JobRun.id.is_distinct_from(run_id)
    db.session.execute(
        update(JobRun).where(others, JobRun.status == RunStatus.RUNNING)
        .values(status=RunStatus.FAILED, finished_at=now,
                error="abandoned: the process running it stopped before it finished"))
    db.session.execute(
        update(JobRun).where(others, JobRun.status == RunStatus.QUEUED, JobRun.created_at < now - QUEUED_LOST_AFTER)
        .values(status=RunStatus.FAILED, finished_at=now, error="lost: it never reached a worker"))
    run = db.session.get(JobRun, run_id) if run_id is not None else None
    if run is None:
        run = JobRun(id=run_id or uuid.uuid4(), job_name=name, trigger=trigger, requested_by=requested_by,
                     status=RunStatus.RUNNING, started_at=now)
        db.session.add(run)
    else:
        run.status, run.started_at = RunStatus.RUNNING, now
    db.session.commit()
    return run.id


def _finish(run_id: uuid.UUID, *, status: str, counts: dict | None = None, error: str | None = None) -> None:
    values = {"status": status, "finished_at": utcnow(), "error": error}
    if counts is not None:
        values["counts"] = counts
    db.session.execute(update(JobRun).where(JobRun.id == run_id).values(**values))
    db.session.commit()


def _fail(name: str, *, run_id: uuid.UUID, exc: BaseException) -> None:
    error = describe_exception(exc)
    interrupted = isinstance(exc, (ShutDownImminentException, KeyboardInterrupt, SystemExit))
    try:
        _finish(run_id, status=RunStatus.FAILED, error=("interrupted: " if interrupted else "") + error)
        if not interrupted:
            previous = last_success(name)
            raise_alert(
                alert_type=AlertType.JOB_CRASH, subject=f"job:{name}",
                title=f"Job {name} failed",
                message=f"Run {run_id} of {name} failed: {error}",
                metadata={"job_name": name, "run_id": run_id, "error": error,
                          "last_success_at": previous.finished_at if previous else None,
                          "last_success_run_id": previous.id if previous else None})
            db.session.commit()
    except Exception:  # noqa: BLE001 - recording must not hide the job's own exception
        db.session.rollback()
        log.exception("job_failure_not_recorded", job_name=name, run_id=str(run_id))
    log.error("job_failed", job_name=name, run_id=str(run_id), error=error)


def _skip(name: str, *, trigger: str, run_id: uuid.UUID | None, requested_by: uuid.UUID | None) -> dict:
    holder = db.session.scalars(
        select(JobRun.id).where(JobRun.job_name == name, JobRun.status == RunStatus.RUNNING)
        .order_by(JobRun.started_at.desc()).limit(1)).first()
    reason = f"skipped: run {holder} of {name} is in progress" if holder else \
        f"skipped: another run of {name} is in progress"
    now = utcnow()
    run = db.session.get(JobRun, run_id) if run_id is not None else None
    if run is None:
        run = JobRun(id=run_id or uuid.uuid4(), job_name=name, trigger=trigger, requested_by=requested_by)
        db.session.add(run)
    run.status, run.started_at, run.finished_at, run.error = RunStatus.SKIPPED, now, now, reason
    db.session.commit()
    log.info("job_skipped", job_name=name, run_id=str(run.id), running=str(holder) if holder else None)
    return {"run_id": str(run.id), "status": RunStatus.SKIPPED, "skipped": reason}


def _jsonable(counts: dict) -> dict:
    """Counts as stored in JSONB: Decimals and ids as strings, never floats."""
    return json.loads(metadata_json(counts))
