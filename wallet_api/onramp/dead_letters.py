"""The dead letter queue: webhook events that failed every retry, parked for a human to replay or discard."""
from __future__ import annotations

import datetime as dt
import uuid

import structlog
from sqlalchemy import func, select

from wallet_api.db_types import utcnow
from wallet_api.errors import Conflict, NotFound, field_error
from wallet_api.extensions import db
from wallet_api.metrics import record_webhook
from wallet_api.onramp.models import DeadLetterQueue, DlqResolution, EventStatus, WebhookEvent
from wallet_api.onramp.retry_job import reset_for_replay
from wallet_api.pagination import Page, keyset_page

log = structlog.get_logger(__name__)


def dead_letter(*, event: WebhookEvent, failure_reason: str) -> DeadLetterQueue:
    """Park an event in the dead letter queue, in the caller's transaction (the caller commits)."""
    entry = DeadLetterQueue(provider=event.provider, external_id=event.external_id, event_id=event.id,
                            event_type=event.event_type, payload=event.payload, failure_reason=failure_reason,
                            attempts=event.attempts)
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
    if action == DlqResolution.REPLAY:
        event = db.session.execute(
            select(WebhookEvent).where(WebhookEvent.id == entry.event_id).with_for_update()
        ).scalar_one()
        if event.status != EventStatus.DEAD_LETTERED:
            raise Conflict(f"The event is {event.status}, not dead-lettered.", error="event_not_dead_lettered")
        # Queued after the commit below: the job must see the reset row. If Redis is down the sweeper finds it.
        reset_for_replay(event=event, now=now)
    entry.resolved_at = now
    entry.resolved_by = admin_id
    entry.resolution = action
    entry.resolution_note = note
    db.session.commit()
    record_webhook(provider=entry.provider, stage="dead_letter", outcome=action)
    log.info("dlq_resolved", dlq_id=str(entry.id), event_id=str(entry.event_id), action=action,
             admin_id=str(admin_id))
    return entry


def get_dlq_entry(*, entry_id: uuid.UUID) -> DeadLetterQueue:
    """One DLQ entry, resolved or not, with its payload and failure; 404 when there is none."""
    entry = db.session.get(DeadLetterQueue, entry_id)
    if entry is None:
        raise NotFound("Dead letter entry not found.")
    return entry


def count_unresolved() -> int:
    """How many entries wait for a human."""
    return db.session.scalar(select(func.count()).select_from(DeadLetterQueue)
                             .where(DeadLetterQueue.resolved_at.is_(None)))
