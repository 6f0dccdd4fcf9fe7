"""The worker process (Procfile `worker`): `python -m worker.main [--burst] [--processes N]`.

1. Validates the configuration; exits 1 naming every problem (never a value).
2. Waits for Redis with backoff (1 s doubling to 30 s), logging each attempt: a worker started
   while Redis is down starts working when it comes back.
3. Lowers its CPU priority by WORKER_NICE (default 10), for the processes it starts too: where web and
   worker share a host's cores, the web's requests run first.
4. Runs WORKER_PROCESSES (default 2) `WalletWorker`s on every queue the app enqueues to
   (`QUEUE_NAMES`, webhooks first), each with RQ's scheduler for retry intervals, under RQ's
   WorkerPool (WalletWorkerPool), which starts a new worker whenever one exits (memory limit, crash). With one
   process the worker runs in this process, without a pool.
SIGTERM or SIGINT: every worker finishes its current job (a drain hands back within one event)
and the process exits 0; a signal that arrives while the processes are still starting (Heroku
signals every process of a dyno at once) stops them as soon as they can be stopped.
--burst: work until the queues are empty, then exit.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import structlog
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.worker_pool import WorkerPool

from wallet_api.config import ConfigError, Settings, load_settings
from wallet_api.logging import configure_logging
from wallet_api.queues import QUEUE_NAMES, redis_from_settings
from worker.runner import (
    MAX_BACKOFF_SECONDS,
    WalletWorker,
    request_shutdown,
    share_pool_stop,
    shutdown_requested,
    stopping,
)

log = structlog.get_logger("worker.main")


def wait_for_redis(settings: Settings, stop: threading.Event) -> Redis | None:
    """A Redis client that answered PING, or None when asked to stop while waiting."""
    delay = 1.0
    while True:
        connection = redis_from_settings(settings)
        try:
            connection.ping()
            return connection
        except RedisError as exc:
            log.warning("worker_waiting_for_redis", error=type(exc).__name__, retry_in_seconds=delay)
        if stop.wait(delay):
            return None
        delay = min(delay * 2, MAX_BACKOFF_SECONDS)


class WalletWorkerPool(WorkerPool):
    """RQ's pool, honouring a SIGTERM that arrived while it was forking its workers (before its own
    handlers were installed): otherwise it would keep replacing the workers that stopped on it. Its
    stop also sets an event every worker it forked sees (`runner.share_pool_stop`): RQ's stop signal
    to a worker is lost if it lands while that worker is being forked, and the pool would wait for
    it forever."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._supervisor_pid = os.getpid()
        self._stop_event = share_pool_stop()

    def request_stop(self, signum=None, frame=None):
        if os.getpid() != self._supervisor_pid:
            # A worker forked after the pool installed this handler runs it until RQ installs its own:
            # that worker stops (as with worker.main's handler), not the pool and its siblings.
            request_shutdown()
            return None
        self._stop_event.set()
        return super().request_stop(signum, frame)

    def _install_signal_handlers(self):
        super()._install_signal_handlers()
        if stopping():
            self.request_stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.main", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", action="store_true", help="work until the queues are empty, then exit")
    parser.add_argument("--processes", type=int, help="worker processes (default: WORKER_PROCESSES)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    configure_logging(level=settings.log_level, json=settings.log_json)
    processes = args.processes or settings.worker_processes
    if processes < 1:
        parser.error("--processes must be at least 1")

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_shutdown)
    connection = wait_for_redis(settings, shutdown_requested)
    if connection is None:
        return 0
    # Below the web process on a host that runs both: a user's request preempts a credit, which has
    # a budget of seconds, not milliseconds. Inherited by every worker the pool forks.
    niceness = os.nice(settings.worker_nice)
    log.info("worker_starting", processes=processes, queues=list(QUEUE_NAMES), burst=args.burst, nice=niceness)
    if processes == 1:
        queues = [Queue(name, connection=connection) for name in QUEUE_NAMES]
        WalletWorker(queues, connection=connection).work(burst=args.burst, with_scheduler=True,
                                                          logging_level=settings.log_level)
    else:
        WalletWorkerPool(list(QUEUE_NAMES), connection=connection, num_workers=processes,
                         worker_class=WalletWorker).start(burst=args.burst, logging_level=settings.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
