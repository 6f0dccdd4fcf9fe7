"""Runs in a worker (the periodic webhook-retry job): make due retries pending again, and sweep
events left pending too long (their drain was lost with Redis, or never queued), then ask for a
drain. See the pipeline's design overview in `wallet_api/onramp/__init__.py`."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import structlog
from flask import current_app
from sqlalchemy import or_, select

from wallet_api.db_types import utcnow
from wallet_api.extensions import db
from wallet_api.metrics import record_webhook
from wallet_api.onramp import moonpay
from wallet_api.onramp.drain_queue import request_drain
from wallet_api.onramp.models import EventStatus, WebhookEvent

log = structlog.get_logger(__name__)

SWEEP_BATCH = 500


@dataclass(frozen=True)
class MaintenanceResult:
    retried: int
    swept: int
    enqueue_failed: int


def run_webhook_maintenance(*, now: dt.datetime | None = None, batch: int = SWEEP_BATCH) -> MaintenanceResult:
    """The webhook-retry job: make due retries pending, re-mark stale pending events, ask for a drain."""
    now = now or utcnow()
    settings = current_app.config["SETTINGS"]
    due = _claim(
        (WebhookEvent.status == EventStatus.RETRY_SCHEDULED) & (WebhookEvent.next_attempt_at <= now),
        order_by=WebhookEvent.next_attempt_at, now=now, batch=batch)
    stale_before = now - dt.timedelta(seconds=settings.webhook_stale_after_seconds)
    stale = _claim(
        (WebhookEvent.status == EventStatus.PENDING)
        & or_(WebhookEvent.enqueued_at.is_(None), WebhookEvent.enqueued_at < stale_before),
        order_by=WebhookEvent.enqueued_at, now=now, batch=batch)
    drain = request_drain(helper=True)  # never swallowed by the lease of a drain that was killed
    db.session.commit()
    failed = 0 if drain.ok else due + stale
    for outcome, claimed in (("retry_enqueued", due), ("swept", stale)):
        for _ in range(claimed):
            record_webhook(provider=moonpay.PROVIDER, stage="maintenance", outcome=outcome)
    if due or stale:
        log.info("webhook_maintenance", retried=due, swept=stale, enqueue_failed=failed)
    return MaintenanceResult(retried=due, swept=stale, enqueue_failed=failed)


def _claim(condition, *, order_by, now: dt.datetime, batch: int) -> int:
    """Mark matching events pending-and-queued-now (SKIP LOCKED, in the caller's transaction); how many."""
    events = db.session.execute(
        select(WebhookEvent).where(condition).order_by(order_by).limit(batch)
        .with_for_update(skip_locked=True)
    ).scalars().all()
    for event in events:
        event.status = EventStatus.PENDING
        event.next_attempt_at = None
        event.enqueued_at = now
        event.enqueue_count += 1
    return len(events)


def reset_for_replay(*, event: WebhookEvent, now: dt.datetime) -> None:
    """Give a dead-lettered event a fresh set of attempts and ask for a drain after the caller's commit
    (the caller holds the event's lock)."""
    event.status = EventStatus.PENDING
    event.attempts = 0
    event.next_attempt_at = None
    event.processed_at = None
    event.outcome = None
    event.enqueued_at = now
    event.enqueue_count += 1
    request_drain(helper=True)
