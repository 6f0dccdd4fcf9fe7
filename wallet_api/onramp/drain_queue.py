"""Asking the workers to apply stored webhook events: one drain serves a stream, helpers join a backlog.

A drain job (`apply_job.drain_pending`) applies pending events one transaction each, so one job
serves a whole burst or stream of webhooks and RQ's per-job cost is paid per burst, not per event.

`DRAIN_REQUESTED` is the stream drain's flag. An event's receipt sets it (SET NX) and queues a
drain only if it was not set. The drain, once running, holds it as a lease (renewed every
LEASE_RENEW_SECONDS, lapsing after LEASE_TTL_SECONDS) while it applies events and while it waits
up to a short linger for the next one, so a steady stream queues no job at all. Before it ends it
deletes the flag and then looks for work one last time: an event whose receipt found the flag set
was committed before that delete, so the last look sees it; an event committed after it queues a
drain of its own. A drain killed while holding the lease leaves events that queued nothing until
the lease lapses: the next receipt after that queues a drain, and the periodic sweeper takes what
is left.

`HELPER_REQUESTED` is a second flag, for helper drains: a drain that finds more than its next
event waiting asks for one, so an idle worker joins in (they claim events with FOR UPDATE SKIP
LOCKED and never step on each other). A helper deletes its flag as it starts, applies what is
pending and ends; it never lingers and never holds the lease. The sweeper and DLQ replays ask for
a helper too, so a lease left by a killed drain cannot swallow their request.

If Redis loses a job (or refuses it), the events are still in PostgreSQL: the next event asks
again, and the periodic webhook-retry job sweeps events left pending too long.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

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
HELPER_REQUESTED = "wallet_api:webhooks:drain-helper-requested"
# Bounds the life of a flag whose job was lost with part of Redis: new events then queue a drain again.
DRAIN_REQUESTED_TTL_SECONDS = 60
# A running drain's hold on DRAIN_REQUESTED: short, since while it lasts after the drain died, new
# events queue nothing (they wait for the next receipt after it lapses, or for the sweeper).
LEASE_TTL_SECONDS = 5
LEASE_RENEW_SECONDS = 1.0
# RQ-level retries cover infrastructure failures only (the database unreachable, a worker killed);
# business failures are retried from the database after WEBHOOK_RETRY_BACKOFF_SECONDS.
RQ_RETRY_INTERVALS = (15, 60, 300)


@dataclass
class DrainRequest:
    """Makes sure a drain job is queued; `ok` is False when Redis could not be reached."""

    helper: bool = False
    ok: bool | None = None

    def send(self) -> bool:
        """Queue a drain unless one (of this kind) is already waiting or running."""
        settings = current_app.config["SETTINGS"]
        redis = redis_connection()
        flag = HELPER_REQUESTED if self.helper else DRAIN_REQUESTED
        try:
            if redis.set(flag, "queued", nx=True, ex=DRAIN_REQUESTED_TTL_SECONDS):
                try:
                    get_queue(WEBHOOKS).enqueue(
                        DRAIN_JOB, kwargs={"helper": True} if self.helper else None,
                        job_timeout=settings.rq_job_timeout_seconds,
                        retry=Retry(max=len(RQ_RETRY_INTERVALS), interval=list(RQ_RETRY_INTERVALS)),
                        result_ttl=0, failure_ttl=7 * 24 * 3600,
                        description=f"apply stored {PROVIDER} webhook events")
                except RedisError:
                    redis.delete(flag)
                    raise
            self.ok = True
        except RedisError as exc:
            self.ok = False
            log.warning("webhook_drain_not_queued", error=type(exc).__name__)
            record_webhook(provider=PROVIDER, stage="enqueue", outcome="redis_unavailable")
        return self.ok


def request_drain(*, helper: bool = False) -> DrainRequest:
    """After the current transaction commits, make sure stored events get applied by a worker."""
    request = DrainRequest(helper=helper)
    after_commit(request.send)
    return request


def request_drain_now(*, helper: bool = False) -> bool:
    """Ask for a drain at once (a helper for a backlog, or a continuation for a drain that stops with
    work left)."""
    return DrainRequest(helper=helper).send()


@dataclass
class DrainLease:
    """The stream drain's hold on DRAIN_REQUESTED (see the module's docstring). Redis failing costs at
    most extra drain jobs, never a missed event: the last look after `release` does not need Redis."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    renewed_at: float = float("-inf")

    def hold(self) -> None:
        """Take or renew the lease (overwriting the receipt's flag: this drain is what it asked for)."""
        try:
            redis_connection().set(DRAIN_REQUESTED, self.token, ex=LEASE_TTL_SECONDS)
        except RedisError:
            pass  # new events queue drains meanwhile: extra jobs, nothing missed
        self.renewed_at = time.monotonic()

    def renew_if_due(self) -> None:
        if time.monotonic() - self.renewed_at >= LEASE_RENEW_SECONDS:
            self.hold()

    def release(self) -> None:
        try:
            redis_connection().delete(DRAIN_REQUESTED)
        except RedisError:
            pass  # the lease lapses by itself


def helper_started() -> None:
    """Called by a helper drain as it starts: from now on a backlog may ask for another helper."""
    try:
        redis_connection().delete(HELPER_REQUESTED)
    except RedisError:
        pass  # the flag expires by itself
