"""The periodic jobs of wallet_api/jobs/catalog.py, held in rq-scheduler under stable ids.

`register_schedule` makes rq-scheduler hold exactly the enabled periodic jobs:
- a job already registered with the same function, interval, queue and timeout is left alone
  (its next run time is kept), so re-asserting the schedule never registers a job twice or
  pushes its next run back;
- a changed one is replaced under the same id;
- a periodic job whose id is no longer wanted (renamed, removed, disabled) is cancelled.
The scheduler process (`worker/scheduler.py`) calls it on every loop, not only at start-up: Redis
may lose its data at any moment (FLUSHALL, a restart without persistence), and with it every
registration; the next loop puts them back and the jobs run at once.
"""
from __future__ import annotations

import datetime as dt

from rq.exceptions import NoSuchJobError

from wallet_api.config import Settings
from wallet_api.jobs.catalog import PERIODIC_JOBS, SCHEDULER_ID_PREFIX, JobSpec


def _is_periodic(job) -> bool:
    return job.id.startswith(SCHEDULER_ID_PREFIX) or "interval" in job.meta or "cron_string" in job.meta


def register_schedule(*, scheduler, settings: Settings, jobs: tuple[JobSpec, ...] = PERIODIC_JOBS,
                      now: dt.datetime | None = None) -> dict[str, str]:
    """Make rq-scheduler hold exactly the enabled `jobs`; return {id: kept | registered | replaced | cancelled}."""
    # rq-scheduler keeps naive UTC datetimes.
    first_run = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).replace(tzinfo=None)
    wanted = {job.scheduler_id: job for job in jobs if job.enabled(settings)}
    report: dict[str, str] = {}
    for existing in list(scheduler.get_jobs()):
        if existing.id not in wanted and _is_periodic(existing):
            scheduler.cancel(existing)
            existing.delete()
            report[existing.id] = "cancelled"
    for job_id, job in wanted.items():
        interval, timeout = int(job.interval(settings)), int(job.timeout(settings))
        state = "registered"
        if job_id in scheduler:
            try:
                current = scheduler.job_class.fetch(job_id, connection=scheduler.connection)
            except NoSuchJobError:  # listed, but its job hash is gone (Redis lost part of its data)
                current = None
            if (current is not None and current.func_name == job.func and current.meta.get("interval") == interval
                    and current.origin == job.queue and current.timeout == timeout):
                report[job_id] = "kept"
                continue
            scheduler.cancel(job_id)
            state = "replaced"
        scheduler.schedule(scheduled_time=first_run, func=job.func, interval=interval, repeat=None,
                           id=job_id, queue_name=job.queue, timeout=timeout, result_ttl=interval * 2,
                           description=f"periodic {job.name} every {interval}s")
        report[job_id] = state
    return report
