"""Redis and the RQ queues. PostgreSQL stays the source of truth: nothing here is the only copy.

Jobs are put on a queue only once the transaction that made their rows has committed, so a job
never sees a row that was rolled back: `enqueue_after_commit` (or, for anything else that must
wait for the commit, `after_commit`) registers it on the current database session, and a session
hook sends it after the COMMIT (and drops it on a rollback).
Jobs take ids, never ORM objects, and must tolerate finding nothing to do (RQ may run a job
twice, or never: a job lost with Redis is found again by the sweepers).
Every job carries the id of the web request (or job) that enqueued it in its meta, which RQ stores
with the job and the worker reads with it: no extra Redis round trip on either side.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from flask import current_app, has_request_context
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import event
from sqlalchemy.orm import Session

from wallet_api.config import Settings
from wallet_api.extensions import db
from wallet_api.logging import JOB_PARENT_ID, JOB_REQUEST_ID, job_origin

log = structlog.get_logger(__name__)

# Every queue the app enqueues to; the Procfile's worker consumes all of them, in this order.
WEBHOOKS = "webhooks"
DEFAULT = "default"
QUEUE_NAMES = (WEBHOOKS, DEFAULT)
_PENDING = "wallet_api.after_commit"


def redis_from_settings(settings: Settings, **options) -> Redis:
    """A Redis client for REDIS_URL: the one place every process builds its connection."""
    defaults = {"socket_connect_timeout": 2, "socket_timeout": 5, "health_check_interval": 30}
    return Redis.from_url(settings.redis_url, **{**defaults, **options})


# A web request's Redis work is never the only record of anything (PostgreSQL holds it, and the
# sweepers find what Redis missed), and a command answers in well under a millisecond: a request
# gives Redis this long, so that a hung Redis cannot hold gunicorn's threads. Jobs keep the 5 s.
REQUEST_REDIS_TIMEOUT_SECONDS = 0.5


def redis_connection() -> Redis:
    """One client (connection pool) per app for jobs and commands, and one for web requests, whose
    calls time out after REQUEST_REDIS_TIMEOUT_SECONDS."""
    ext = current_app.extensions
    key = "wallet_redis_requests" if has_request_context() else "wallet_redis"
    client = ext.get(key)
    if client is None:
        timeouts = ({"socket_connect_timeout": REQUEST_REDIS_TIMEOUT_SECONDS,
                     "socket_timeout": REQUEST_REDIS_TIMEOUT_SECONDS} if key == "wallet_redis_requests" else {})
        client = ext.setdefault(key, redis_from_settings(current_app.config["SETTINGS"], **timeouts))
    return client


class TracedQueue(Queue):
    """A queue whose jobs carry where they come from (see `with_origin`)."""

    def create_job(self, *args, meta: dict | None = None, **kwargs):
        return super().create_job(*args, meta=with_origin(meta), **kwargs)


def with_origin(meta: dict | None) -> dict | None:
    """`meta` plus the enqueuing request's id or job's id (logging.job_origin), unless it names one."""
    if meta is not None and (JOB_REQUEST_ID in meta or JOB_PARENT_ID in meta):
        return meta
    origin = job_origin()
    return {**(meta or {}), **origin} if origin else meta


def get_queue(name: str = DEFAULT) -> Queue:
    settings = current_app.config["SETTINGS"]
    return TracedQueue(name, connection=redis_connection(), default_timeout=settings.rq_job_timeout_seconds)


@dataclass
class PendingJob:
    """A job waiting for its transaction to commit; `enqueued` says what happened after the commit."""

    queue: str
    func: str
    args: tuple
    options: dict[str, Any] = field(default_factory=dict)
    enqueued: bool | None = None  # None: not committed yet (or rolled back)

    def send(self) -> bool:
        try:
            get_queue(self.queue).enqueue(self.func, *self.args, **self.options)
            self.enqueued = True
        except RedisError as exc:
            # The rows are committed; the job's sweeper finds them again. Never fail the caller.
            self.enqueued = False
            log.warning("enqueue_failed", func=self.func, queue=self.queue, error=type(exc).__name__)
        return self.enqueued


def after_commit(callback: Callable[[], object]) -> None:
    """Call `callback()` once the current transaction of `db.session` commits; never if it rolls back.

    A savepoint rolled back inside a committed transaction does not cancel it, which is one more
    reason why jobs must tolerate finding nothing to do. The callback must not raise.
    """
    db.session().info.setdefault(_PENDING, []).append(callback)


def enqueue_after_commit(queue: str, func: str, *args, **options) -> PendingJob:
    """Put `func(*args)` on `queue` once the current transaction of `db.session` commits.

    `options` are RQ's enqueue options (job_id, job_timeout, retry, result_ttl, ...).
    """
    # The origin now: the commit may come when the context that asked is gone.
    meta = with_origin(options.pop("meta", None))
    if meta is not None:
        options["meta"] = meta
    pending = PendingJob(queue=queue, func=func, args=args, options=options)
    after_commit(pending.send)
    return pending


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for callback in session.info.pop(_PENDING, ()):
        callback()


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_commit(session: Session, previous_transaction) -> None:
    if previous_transaction.parent is None:  # the whole transaction, not a savepoint
        session.info.pop(_PENDING, None)
