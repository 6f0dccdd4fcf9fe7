"""Asking the workers to apply stored webhook events: at most one drain job waits in the queue.

A drain job (`apply_job.drain_pending`) applies pending events one transaction each until none is
left, so one queued job serves a whole burst of webhooks, and RQ's per-job cost is paid per
burst, not per event. `DRAIN_REQUESTED` is set while a drain waits in the queue; a drain deletes
it when it starts, so an event stored after that point asks for (and gets) a new drain. A drain
that finds a backlog asks for one more, so every idle worker joins in; they claim events with
FOR UPDATE SKIP LOCKED and never step on each other.

If Redis loses the job (or refuses it), the events are still in PostgreSQL: the next event asks
again, and the periodic webhook-retry job sweeps events left pending too long.
"""
from __future__ import annotations

from dataclasses import dataclass

import structlog
from flask import current_app
from redis.exceptions import RedisError
from rq import Retry

from wallet_api.metrics import record_webhook
from wallet_api.onramp.moonpay import PROVIDER
from wallet_api.queues import WEBHOOKS, after_commit, get_queue, redis_connection

log = structlog.get_logger(__name__)

DRAIN_JOB = "worker.jobs.drain_webhook_events"
DRAIN_REQUESTED = "wallet_api:webhooks:drain-requested"
# Bounds the life of a flag whose job was lost with part of Redis: new events then queue a drain again.
DRAIN_REQUESTED_TTL_SECONDS = 60
# RQ-level retries cover infrastructure failures only (the database unreachable, a worker killed);
# business failures are retried from the database after WEBHOOK_RETRY_BACKOFF_SECONDS.
RQ_RETRY_INTERVALS = (15, 60, 300)


@dataclass
class DrainRequest:
    """Makes sure a drain job is queued; `ok` is False when Redis could not be reached."""

    ok: bool | None = None

    def send(self) -> bool:
        """Queue a drain unless one is already waiting."""
        settings = current_app.config["SETTINGS"]
        redis = redis_connection()
        try:
            if redis.set(DRAIN_REQUESTED, "1", nx=True, ex=DRAIN_REQUESTED_TTL_SECONDS):
                try:
                    get_queue(WEBHOOKS).enqueue(
                        DRAIN_JOB, job_timeout=settings.rq_job_timeout_seconds,
                        retry=Retry(max=len(RQ_RETRY_INTERVALS), interval=list(RQ_RETRY_INTERVALS)),
                        result_ttl=0, failure_ttl=7 * 24 * 3600,
                        description=f"apply stored {PROVIDER} webhook events")
                except RedisError:
                    redis.delete(DRAIN_REQUESTED)
                    raise
            self.ok = True
        except RedisError as exc:
            self.ok = False
            log.warning("webhook_drain_not_queued", error=type(exc).__name__)
            record_webhook(provider=PROVIDER, stage="enqueue", outcome="redis_unavailable")
        return self.ok


def request_drain() -> DrainRequest:
    """After the current transaction commits, make sure stored events get applied by a worker."""
    request = DrainRequest()
    after_commit(request.send)
    return request


def request_drain_now() -> bool:
    """Ask for a drain at once (from a drain that found a backlog, or stops with work left)."""
    return DrainRequest().send()


def drain_started() -> None:
    """Called by a drain as it starts: from now on a newly stored event asks for a new drain."""
    try:
        redis_connection().delete(DRAIN_REQUESTED)
    except RedisError:
        pass  # the flag expires by itself
