"""The worker: jobs run inside the worker process, in one Flask app with one connection pool.

RQ's default Worker forks a work horse for every job, and every horse opens its own PostgreSQL
connection: about 30 ms per job before any work, the ceiling measured in docs/PERFORMANCE.md.
`WalletWorker` is an RQ SimpleWorker instead (no fork): the app, its mappers and its pooled
connections are made once per process. What the fork used to give, and how it is kept:

- A job that fails leaves nothing half-written: every event, every reconciliation is its own
  database transaction. A process that dies (kill -9, OOM) takes only its own transaction with
  it; PostgreSQL rolls it back, RQ marks the job abandoned, and the event is applied by the next
  drain or the sweeper. `worker.main` runs workers under a pool that starts a new one.
- Job timeouts still end a stuck job: RQ's SIGALRM death penalty raises inside the job; database
  statements are bounded by statement_timeout and lock_timeout anyway.
- Memory: a worker whose resident memory passes WORKER_MAX_MEMORY_MB after a job stops after it
  (warm), and the pool replaces it with a fresh process.
- Warm shutdown (SIGTERM, SIGINT): the current job finishes; a drain checks `stopping()` between
  events and hands back within one event, queueing its own continuation.
- Redis outages: RQ's loop gives up on many Redis errors ("found an unhandled exception,
  quitting"); here the loop is restarted with backoff (1 s doubling to 30 s) under a new worker
  name once Redis answers again. Nothing is lost meanwhile: PostgreSQL holds every event.
- Processes RQ forks from a worker (its scheduler for retry intervals) drop the inherited
  connection pool, so parent and child never share a database socket.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
import uuid

import structlog
from flask import Flask, current_app, has_app_context
from redis.exceptions import RedisError
from rq.exceptions import StopRequested
from rq.worker import SimpleWorker
from sqlalchemy import text
from sqlalchemy.orm import configure_mappers

from wallet_api import create_app
from wallet_api.extensions import db
from wallet_api.logging import job_context

log = structlog.get_logger("worker.runner")

MAX_BACKOFF_SECONDS = 30
# How long a stopping worker waits for its scheduler process after each SIGTERM (see stop_scheduler).
SCHEDULER_STOP_SECONDS = 2.0
_app: Flask | None = None
# Set by SIGTERM/SIGINT: by worker.main's handler until RQ installs its own (a signal during start-up, which
# a pool's children inherit too), then by RQ's through request_stop.
shutdown_requested = threading.Event()
# Set by a worker pool's supervisor as it stops its workers (worker/main.py), seen by every worker it
# forked: its stop signal to a worker that was being forked at that instant can be lost (the child
# drops a signal that arrives before the interpreter has finished forking); this cannot.
pool_stopping = None
_fork_hook_installed = False


def get_app() -> Flask:
    """The app jobs run in: the current one if any (tests, in-process workers), else built once from the env."""
    global _app
    if has_app_context():
        return current_app._get_current_object()  # type: ignore[attr-defined]
    if _app is None:
        _app = create_app()
        # The app's objects live as long as the process: full collections skip them from now on
        # (a stall of 90-300 ms each otherwise; see gunicorn.conf.py, which does the same for the web).
        gc.freeze()
    return _app


def stopping() -> bool:
    """True once this worker was asked to stop: long jobs hand back at their next safe point."""
    return shutdown_requested.is_set() or (pool_stopping is not None and pool_stopping.is_set())


def share_pool_stop():
    """In a pool's supervisor, before it forks its workers: the event its stop sets for all of them."""
    global pool_stopping
    pool_stopping = multiprocessing.get_context("fork").Event()
    return pool_stopping


def request_shutdown(*_signal) -> None:
    """The SIGTERM/SIGINT handler of a worker process until RQ installs its own."""
    shutdown_requested.set()


@contextlib.contextmanager
def job_app_context():
    """A fresh app context (so a fresh scoped DB session) around one job, cleaned up after it."""
    app = get_app()
    with app.app_context():
        try:
            yield app
        finally:
            # The log context stays until the worker's `execute_job` ends, so RQ's own lines about
            # this job (its outcome, its traceback) still carry it; the next job starts a fresh one.
            db.session.remove()


def resident_memory_mb() -> float:
    """This process's resident set size now (Linux /proc), in MiB."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # no /proc: the peak is the best we know
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class WalletWorker(SimpleWorker):
    """A non-forking RQ worker running jobs in the wallet_api app; see the module docstring."""

    def work(self, *args, **kwargs):
        burst = kwargs.get("burst", args[0] if args else False)
        if stopping():  # signalled before it even started (a pool's child forked as the dyno stops)
            return False
        app = get_app()  # once per process: a bad environment stops the worker before any job
        _install_fork_hook()
        # The `rq` code gave its loggers their own plain handlers before the app configured logging;
        # drop them so RQ's lines go through the app's structured (JSON in production) handler once.
        for name in ("rq.worker", "rq.job", "rq.scheduler", "rq.queue"):
            logging.getLogger(name).handlers.clear()
        with app.app_context():
            _warm_up()
            delay = 1.0
            while True:
                started = time.monotonic()
                try:
                    worked = super().work(*args, **kwargs)
                except RedisError:  # RQ's own clean-up could not reach Redis either
                    worked = False
                if burst or stopping():
                    return worked
                # RQ's loop gave up, on a Redis error as a rule: wait, then work again.
                if time.monotonic() - started > 60:
                    delay = 1.0
                log.warning("worker_redis_unavailable", worker=self.name, retry_in_seconds=delay)
                try:
                    if shutdown_requested.wait(delay):
                        return worked
                except StopRequested:  # RQ's signal handler, still installed, stops an idle worker so
                    return worked
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                self.name = uuid.uuid4().hex  # the old registration may linger in Redis until its TTL

    def _install_signal_handlers(self):
        super()._install_signal_handlers()
        # A SIGTERM that arrived while this process was still starting (Heroku signals every process of
        # the dyno at once) went to request_shutdown: honour it now, or the worker would never stop.
        if stopping():
            self._stop_requested = True

    def request_stop(self, signum, frame):
        shutdown_requested.set()
        return super().request_stop(signum, frame)

    def stop_scheduler(self):
        """RQ's, bounded. The scheduler is a process forked a moment ago when a worker is stopped as
        it starts: until it installs its own handlers it runs the worker's, which do not end it, so
        RQ's SIGTERM-then-join can wait forever (and the dyno with it). Ask again, then kill: it only
        moves scheduled jobs, and its Redis locks expire by themselves."""
        process = self.scheduler._process if self.scheduler else None
        if process is None or not process.pid:
            return
        for sig, wait in ((signal.SIGTERM, SCHEDULER_STOP_SECONDS), (signal.SIGTERM, SCHEDULER_STOP_SECONDS),
                          (signal.SIGKILL, None)):
            if sig == signal.SIGKILL:
                log.warning("scheduler_killed", worker=self.name, pid=process.pid)
            try:
                os.kill(process.pid, sig)
            except OSError:
                pass
            process.join(wait)
            if not process.is_alive():
                return

    def execute_job(self, job, queue):
        # RQ's own lines about the job (its outcome, a traceback) carry the job's context too.
        with job_context(job):
            return super().execute_job(job, queue)

    def perform_job(self, job, queue):
        outcome = super().perform_job(job, queue)
        limit = current_app.config["SETTINGS"].worker_max_memory_mb
        used = resident_memory_mb()
        if used > limit and not self._stop_requested:
            log.warning("worker_memory_limit_reached", worker=self.name, resident_mb=round(used),
                        limit_mb=limit)
            self._stop_requested = True  # after this job; the pool starts a fresh process
        return outcome


def _warm_up() -> None:
    """Import the job modules, configure the mappers and initialise the PostgreSQL dialect once, before
    the first job, so the first webhook does not pay for it."""
    importlib.import_module("worker.jobs")  # by name: worker.jobs imports this module
    configure_mappers()
    with db.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _install_fork_hook() -> None:
    global _fork_hook_installed
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_forget_inherited_connections)
        _fork_hook_installed = True


def _forget_inherited_connections() -> None:
    # A forked child (RQ's scheduler) must neither use nor close the parent's pooled connections.
    if _app is not None:
        with _app.app_context():
            db.engine.dispose(close=False)
