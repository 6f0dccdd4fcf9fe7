"""Alerts and the dead letter queue: what the system hands to a human, and how a human answers."""
from __future__ import annotations

import datetime as dt
import uuid

import structlog
from sqlalchemy import select

from wallet_api.admin.models import AlertLog, DeadLetterQueue, DlqResolution, Severity
from wallet_api.db_types import utcnow
from wallet_api.errors import Conflict, NotFound, field_error
from wallet_api.extensions import db
from wallet_api.pagination import Page, keyset_page

log = structlog.get_logger(__name__)


def raise_alert(*, alert_type: str, severity: str, title: str, message: str,
                metadata: dict | None = None) -> AlertLog:
    """Add an alert to the caller's transaction (the caller commits)."""
    if severity not in Severity.ALL:
        raise ValueError(f"unknown severity {severity!r}")
    alert = AlertLog(alert_type=alert_type, severity=severity, title=title[:255], message=message,
                     meta=metadata or {}, resolved=False)
    db.session.add(alert)
    log.warning("alert_raised", alert_type=alert_type, severity=severity, title=title)
    return alert


def dead_letter(*, provider: str, external_id: str, event_id: uuid.UUID, event_type: str, payload: str,
                failure_reason: str, attempts: int) -> DeadLetterQueue:
    """Park an event in the dead letter queue, in the caller's transaction (the caller commits)."""
    entry = DeadLetterQueue(provider=provider, external_id=external_id, event_id=event_id,
                            event_type=event_type, payload=payload, failure_reason=failure_reason,
                            attempts=attempts)
    db.session.add(entry)
    return entry


def list_dlq(*, resolved: bool, limit: int, cursor: str | None) -> Page:
    """One page of DLQ entries, newest first; `cursor` continues a previous page."""
    query = select(DeadLetterQueue).where(
        DeadLetterQueue.resolved_at.is_not(None) if resolved else DeadLetterQueue.resolved_at.is_(None))
    return keyset_page(query, DeadLetterQueue, limit=limit, cursor=cursor)


def resolve_dlq(*, entry_id: uuid.UUID, action: str, note: str, admin_id: uuid.UUID,
                now: dt.datetime | None = None) -> DeadLetterQueue:
    """Resolve a DLQ entry: `replay` resets its event and re-enqueues it; `discard` leaves it parked."""
    from wallet_api.onramp import pipeline
    from wallet_api.onramp.models import EventStatus, WebhookEvent

    if action not in DlqResolution.ALL:
        raise field_error("action", f"Must be one of: {', '.join(DlqResolution.ALL)}.")
    now = now or utcnow()
    entry = db.session.execute(
        select(DeadLetterQueue).where(DeadLetterQueue.id == entry_id).with_for_update()
    ).scalar_one_or_none()
    if entry is None:
        raise NotFound("Dead letter entry not found.")
    if entry.resolved_at is not None:
        raise Conflict("This entry is already resolved.", error="already_resolved")
    generation = None
    if action == DlqResolution.REPLAY:
        event = db.session.execute(
            select(WebhookEvent).where(WebhookEvent.id == entry.event_id).with_for_update()
        ).scalar_one()
        if event.status != EventStatus.DEAD_LETTERED:
            raise Conflict(f"The event is {event.status}, not dead-lettered.", error="event_not_dead_lettered")
        generation = pipeline.reset_for_replay(event=event, now=now)
    entry.resolved_at = now
    entry.resolved_by = admin_id
    entry.resolution = action
    entry.resolution_note = note
    db.session.commit()
    log.info("dlq_resolved", dlq_id=str(entry.id), event_id=str(entry.event_id), action=action,
             admin_id=str(admin_id))
    if generation is not None:
        # After the commit: the job must see the reset row. If Redis is down the sweeper enqueues it.
        pipeline.enqueue_event(event_id=entry.event_id, generation=generation)
    return entry
