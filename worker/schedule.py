"""Every periodic job, in one place, registered with rq-scheduler under stable ids.

`bin/start-scheduler` runs `python -m worker.schedule` before starting `rqscheduler`:
- a job already registered with the same function, interval, queue and timeout is left alone
  (its next run time is kept), so restarting the scheduler never registers a job twice;
- a changed one is replaced under the same id;
- a periodic job whose id is no longer listed here (renamed or removed) is cancelled.
Jobs are enqueued by name, so the scheduler process never imports the app's code paths.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass


from wallet_api.config import Settings
from wallet_api.queues import DEFAULT

ID_PREFIX = "periodic-"


@dataclass(frozen=True)
class PeriodicJob:
    id: str
    func: str
    interval: Callable[[Settings], int]
    queue: str = DEFAULT
    timeout: Callable[[Settings], int] = lambda s: s.rq_job_timeout_seconds

    def __post_init__(self):
        if not self.id.startswith(ID_PREFIX):
            raise ValueError(f"periodic job ids start with {ID_PREFIX!r}: {self.id!r}")


# Add the wallet reconciliation (15 min) and provider reconciliation (1 h) jobs here.
PERIODIC_JOBS: tuple[PeriodicJob, ...] = (
    PeriodicJob(id="periodic-webhook-retry", func="worker.jobs.webhook_retry",
                interval=lambda s: s.webhook_retry_interval_seconds),
    PeriodicJob(id="periodic-idempotency-purge", func="worker.jobs.purge_idempotency_keys",
                interval=lambda s: 3600),
)


def _is_periodic(job) -> bool:
    return job.id.startswith(ID_PREFIX) or "interval" in job.meta or "cron_string" in job.meta


def register_schedule(*, scheduler, settings: Settings, jobs: tuple[PeriodicJob, ...] = PERIODIC_JOBS,
                      now: dt.datetime | None = None) -> dict[str, str]:
    """Make rq-scheduler hold exactly `jobs`; return {job id: kept | registered | replaced | cancelled}."""
    # rq-scheduler keeps naive UTC datetimes.
    first_run = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).replace(tzinfo=None)
    wanted = {job.id: job for job in jobs}
    report: dict[str, str] = {}
    for existing in list(scheduler.get_jobs()):
        if existing.id not in wanted and _is_periodic(existing):
            scheduler.cancel(existing)
            existing.delete()
            report[existing.id] = "cancelled"
    for job in jobs:
        interval, timeout = int(job.interval(settings)), int(job.timeout(settings))
        state = "registered"
        if job.id in scheduler:
            current = scheduler.job_class.fetch(job.id, connection=scheduler.connection)
            if (current.func_name == job.func and current.meta.get("interval") == interval
                    and current.origin == job.queue and current.timeout == timeout):
                report[job.id] = "kept"
                continue
            scheduler.cancel(job.id)
            state = "replaced"
        scheduler.schedule(scheduled_time=first_run, func=job.func, interval=interval, repeat=None,
                           id=job.id, queue_name=job.queue, timeout=timeout, result_ttl=interval * 2,
                           description=f"periodic {job.id[len(ID_PREFIX):]} every {interval}s")
        report[job.id] = state
    return report


def main() -> int:
    """Validate the configuration, then register the schedule; exit 1 naming every problem."""
    from rq_scheduler import Scheduler

    from worker.preflight import settings_and_redis

    settings, connection = settings_and_redis()
    for job_id, state in register_schedule(scheduler=Scheduler(connection=connection), settings=settings).items():
        print(f"{job_id}: {state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
