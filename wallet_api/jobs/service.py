"""What operators see of the jobs and what they may ask of them: status per job, recent runs, run now."""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import distinct_on

from wallet_api.db_types import utcnow
from wallet_api.errors import NotFound, ServiceUnavailable
from wallet_api.extensions import db
from wallet_api.jobs import catalog
from wallet_api.jobs.models import JobRun, RunStatus, Trigger
from wallet_api.pagination import Page, keyset_page
from wallet_api.queues import enqueue_after_commit, redis_connection

# rq-scheduler keeps every scheduled job's next run time (unix seconds) in this sorted set.
RQ_SCHEDULER_TIMES_KEY = "rq:scheduler:scheduled_jobs"


@dataclass(frozen=True)
class JobStatus:
    name: str
    description: str
    interval_seconds: int
    enabled: bool
    last_run: JobRun | None
    last_success_at: dt.datetime | None
    next_run_at: dt.datetime | None


def job_statuses() -> list[JobStatus]:
    """Every periodic job with its interval, last run, last success and next scheduled run."""
    settings = current_app.config["SETTINGS"]
    names = [job.name for job in catalog.PERIODIC_JOBS]
    latest = select(JobRun).where(JobRun.job_name.in_(names)).order_by(
        JobRun.job_name, JobRun.created_at.desc()).ext(distinct_on(JobRun.job_name))
    last_runs = {run.job_name: run for run in db.session.scalars(latest)}
    successes = last_successes(names=names)
    next_runs = _next_run_times([job.scheduler_id for job in catalog.PERIODIC_JOBS])
    return [JobStatus(name=job.name, description=job.description, interval_seconds=int(job.interval(settings)),
                      enabled=job.enabled(settings), last_run=last_runs.get(job.name),
                      last_success_at=successes.get(job.name), next_run_at=next_runs.get(job.scheduler_id))
            for job in catalog.PERIODIC_JOBS]


def last_successes(*, names: list[str]) -> dict[str, dt.datetime]:
    """When each named job last finished successfully; a job that never did is absent."""
    return dict(db.session.execute(
        select(JobRun.job_name, func.max(JobRun.finished_at))
        .where(JobRun.job_name.in_(names), JobRun.status == RunStatus.SUCCEEDED).group_by(JobRun.job_name)).all())


def request_run(*, name: str, requested_by: uuid.UUID) -> JobRun:
    """Queue one run of a periodic job now; 404 for an unknown name, 503 when the queue is unreachable."""
    job = catalog.get(name)
    if job is None:
        raise NotFound(f"No job named {name!r}; jobs: {', '.join(catalog.BY_NAME)}.", error="job_not_found")
    settings = current_app.config["SETTINGS"]
    run = JobRun(id=uuid.uuid4(), job_name=job.name, trigger=Trigger.MANUAL, status=RunStatus.QUEUED,
                 requested_by=requested_by)
    db.session.add(run)
    pending = enqueue_after_commit(job.queue, job.func, str(run.id), Trigger.MANUAL,
                                   job_id=f"job-run-{run.id.hex}", job_timeout=int(job.timeout(settings)),
                                   result_ttl=3600, failure_ttl=7 * 24 * 3600,
                                   description=f"{job.name} (manual run {run.id})")
    db.session.commit()
    if not pending.enqueued:
        run.status, run.finished_at = RunStatus.FAILED, utcnow()
        run.error = "could not be queued: the job queue (Redis) is unavailable"
        db.session.commit()
        raise ServiceUnavailable("The job queue is unavailable; retry shortly.", error="queue_unavailable",
                                 headers={"Retry-After": "5"})
    return run


def list_runs(*, job_name: str | None, limit: int, cursor: str | None) -> Page:
    """Recorded runs, newest first, of one job or of all."""
    query = select(JobRun)
    if job_name is not None:
        if job_name not in catalog.BY_NAME and job_name not in catalog.CLI_JOBS:
            raise NotFound(f"No job named {job_name!r}.", error="job_not_found")
        query = query.where(JobRun.job_name == job_name)
    return keyset_page(query, JobRun, limit=limit, cursor=cursor)


def get_run(*, run_id: uuid.UUID) -> JobRun:
    run = db.session.get(JobRun, run_id)
    if run is None:
        raise NotFound("Job run not found.", error="job_run_not_found")
    return run


def _next_run_times(scheduler_ids: list[str]) -> dict[str, dt.datetime | None]:
    """From rq-scheduler's own record; unknown (None) while Redis is unreachable."""
    try:
        pipe = redis_connection().pipeline(transaction=False)
        for scheduler_id in scheduler_ids:
            pipe.zscore(RQ_SCHEDULER_TIMES_KEY, scheduler_id)
        scores = pipe.execute()
    except RedisError:
        return {}
    return {scheduler_id: dt.datetime.fromtimestamp(score, dt.timezone.utc) if score is not None else None
            for scheduler_id, score in zip(scheduler_ids, scores)}
