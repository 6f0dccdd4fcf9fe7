"""The scheduler process (Procfile `scheduler`): `python -m worker.scheduler`.

rq-scheduler's loop, with two differences that make the schedule heal by itself:
- every loop re-asserts the periodic jobs (`schedule.register_schedule`: a no-op when they are
  there), so a Redis that lost its data (FLUSHALL, restart without persistence) gets them back
  within one interval, and the jobs then run at once;
- Redis being unreachable is waited out: log, back off (1 s doubling to 30 s), reconnect, go on.
  The process exits only on SIGTERM/SIGINT (status 0) or on a bad configuration at start
  (status 1, naming every problem).
Two scheduler processes are safe: rq-scheduler's lock lets one of them move jobs per loop.
"""
from __future__ import annotations

import signal
import sys
import threading
import time

import structlog
from redis.exceptions import RedisError
from rq_scheduler import Scheduler

from wallet_api.config import ConfigError, Settings, load_settings
from wallet_api.logging import configure_logging
from wallet_api.queues import redis_from_settings
from worker.schedule import register_schedule

log = structlog.get_logger("worker.scheduler")

LOOP_SECONDS = 5
MAX_BACKOFF_SECONDS = 30


class WalletScheduler(Scheduler):
    """rq-scheduler that puts the periodic jobs back before each pass over the due ones."""

    def __init__(self, *, settings: Settings, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings
        self.last_report: dict[str, str] = {}

    def enqueue_jobs(self):
        report = register_schedule(scheduler=self, settings=self.settings)
        changed = {job_id: state for job_id, state in report.items() if state != "kept"}
        if changed:
            log.info("schedule_asserted", **changed)
        self.last_report = report
        return super().enqueue_jobs()

    def _install_signal_handlers(self):
        # rq-scheduler's own handler talks to Redis before exiting; while Redis is down that would
        # raise a connection error instead of stopping. Stop first; deregistering is best effort.
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)


_stopping = threading.Event()


def _stop(_signum, _frame):
    _stopping.set()
    raise SystemExit(0)


def run(settings: Settings, *, loop_seconds: float = LOOP_SECONDS) -> None:
    """Schedule until stopped, reconnecting to Redis with backoff whenever it goes away."""
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    delay = 1.0
    while True:
        started = time.monotonic()
        scheduler = WalletScheduler(settings=settings, connection=redis_from_settings(settings),
                                    interval=loop_seconds)
        try:
            log.info("scheduler_started", name=scheduler.name, loop_seconds=loop_seconds)
            scheduler.run()
            return
        except RedisError as exc:
            if _stopping.is_set():  # rq-scheduler's clean-up after our SystemExit could not reach Redis
                return
            if time.monotonic() - started > 60:
                delay = 1.0  # it had been working: start the backoff over
            log.warning("scheduler_redis_unavailable", error=type(exc).__name__, retry_in_seconds=delay)
            if _stopping.wait(delay):
                return
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    configure_logging(level=settings.log_level, json=settings.log_json)
    try:
        run(settings)
    except SystemExit:
        pass
    log.info("scheduler_stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
