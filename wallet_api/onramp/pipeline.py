"""The MoonPay webhook pipeline: receive -> persist -> enqueue -> process exactly once.

Design overview
---------------
MoonPay delivers at least once, out of order, and wants a 2xx within 5 s. So the request path
does only cheap, local work and PostgreSQL (never Redis) holds everything that matters:

1. Receive (`POST /webhooks/moonpay`, `receive_moonpay_webhook`): IP allowlist (403), body size
   (413), `Moonpay-Signature-V2` over the raw bytes (401), body shape (400), then ONE statement
   `INSERT ... ON CONFLICT (provider, event_key) DO NOTHING` and a commit. Only after the commit
   is the processing job put on RQ, so a job never sees a row that was rolled back. The answer
   is 200 whether the enqueue worked or not: a stored event whose job was lost is found by the
   sweeper. The request path never touches a wallet.

2. Event identity (`event_key`). MoonPay sends no event id, so we derive one:
   sha256 of ("moonpay", type, data.id, data.status, data.updatedAt). Not a hash of the raw
   body, because a redelivery is not guaranteed to be byte-identical (a resend may re-serialise
   the JSON, reorder keys or refresh volatile fields such as exchange rates) and it must still
   dedupe; and not (data.id, status) alone, because MoonPay can legitimately send the same status
   twice with new content (e.g. cryptoTransactionId filled in later), which MoonPay marks with a
   new updatedAt. Distinct status updates therefore get distinct keys and are each processed;
   deliveries of one update share a key and are stored once (the duplicate is answered
   `{"received": true, "duplicate": true}`). When updatedAt is absent, a canonical
   serialisation of `data` (sorted keys, exact decimals) stands in for it. Processing is
   idempotent anyway, so a missed dedupe costs a no-op run, never money.

3. Process (`processing.process_event`, run by an RQ worker; jobs take the event id only):
   in ONE database transaction lock the event row (FOR UPDATE), skip it if already processed,
   lock the on-ramp transaction row (FOR UPDATE), move its status forward only, and for
   `completed` call `ledger.credit(commit=False)` with the key
   `webhook:moonpay:{moonpay_tx_id}:{wallet_id}:credit`; mark the on-ramp transaction completed
   and the event processed; commit. Concurrent deliveries and workers serialise on the row
   locks; the ledger's unique idempotency key is the backstop; a crash before the commit leaves
   no trace, and the event is simply run again.

4. Fail and retry: a run that fails (unknown transaction, currency mismatch, an amount with
   more decimals than the currency allows - never rounded -, a conflicting terminal status...)
   rolls back its own work and records attempts, last_error and next_attempt_at in the same
   transaction. The first run is followed by up to WEBHOOK_MAX_RETRIES retries, 1, 5, 15, 30
   and 60 minutes apart (`RETRY_BACKOFF`); when the last one fails the event is parked in the
   dead letter queue and a WEBHOOK_FAILURE alert (high) is written. Infrastructure errors (the
   database gone) raise instead, and RQ's own Retry re-runs the job.

5. Recover (`run_webhook_maintenance`, the periodic webhook-retry job): enqueue retries that
   are due, and sweep events that are still `pending` although their last enqueue is older than
   WEBHOOK_STALE_AFTER_SECONDS (Redis flushed, enqueue failed, worker SIGKILLed). Rows are
   claimed with FOR UPDATE SKIP LOCKED, so an event being processed right now is never touched,
   and two schedulers never claim the same row. Each enqueue gets a new RQ job id
   `webhook-moonpay-<event id>-<enqueue generation>`, so RQ never holds two different jobs under
   one id.

Every function takes `now` so tests walk the retry schedule with a controllable clock.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import bindparam, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from wallet_api.db_types import utcnow
from wallet_api.extensions import db
from wallet_api.metrics import record_webhook
from wallet_api.onramp.moonpay_client import MoonPayTransaction
from wallet_api.onramp.models import MOONPAY_STATUS, EventStatus, WebhookEvent
from wallet_api.queues import WEBHOOKS, get_queue

log = structlog.get_logger(__name__)

PROVIDER = "moonpay"
EVENT_TYPES = ("transaction_created", "transaction_updated", "transaction_failed")
# Delay before retry n (1-based); retries beyond the list reuse the last delay.
RETRY_BACKOFF = tuple(dt.timedelta(minutes=m) for m in (1, 5, 15, 30, 60))
PROCESS_JOB = "worker.jobs.process_webhook_event"
# RQ-level retries cover infrastructure failures only (database unreachable, horse killed);
# business failures are retried from the database with RETRY_BACKOFF.
RQ_RETRY_INTERVALS = (15, 60, 300)
SWEEP_BATCH = 500


class WebhookBodyError(ValueError):
    """A webhook body that is not a well-formed MoonPay buy event; `errors` maps field -> messages."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class ParsedWebhook:
    event_type: str
    transaction: MoonPayTransaction
    event_key: str
    payload_text: str


@dataclass(frozen=True)
class ReceiveResult:
    event_id: uuid.UUID | None
    duplicate: bool
    enqueued: bool


# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def load_payload(raw: str | bytes) -> Any:
    """Decode a provider body with exact decimals: no amount ever passes through a binary float."""
    return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)


def parse_webhook_body(raw: bytes) -> ParsedWebhook:
    """Validate a raw MoonPay webhook body; WebhookBodyError with field errors otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookBodyError({"body": ["Not UTF-8 text."]}) from None
    try:
        body = load_payload(text)
    except (ValueError, RecursionError):
        raise WebhookBodyError({"body": ["Not valid JSON."]}) from None
    if not isinstance(body, dict):
        raise WebhookBodyError({"body": ["Must be a JSON object."]})

    errors: dict[str, list[str]] = {}
    event_type = body.get("type")
    if event_type not in EVENT_TYPES:
        errors["type"] = [f"Must be one of: {', '.join(EVENT_TYPES)}."]
    data = body.get("data")
    transaction = None
    if not isinstance(data, dict):
        errors["data"] = ["Must be an object."]
    else:
        try:
            transaction = MoonPayTransaction.from_payload(data)
        except ValueError as exc:
            field, _, message = str(exc).partition(": ")
            errors[f"data.{field}"] = [message or str(exc)]
        else:
            if transaction.status not in MOONPAY_STATUS:
                errors["data.status"] = [f"Must be one of: {', '.join(MOONPAY_STATUS)}."]
    if errors:
        raise WebhookBodyError(errors)
    assert transaction is not None and isinstance(event_type, str)
    return ParsedWebhook(event_type=event_type, transaction=transaction,
                         event_key=event_key(event_type=event_type, data=data), payload_text=text)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def event_key(*, event_type: str, data: dict) -> str:
    """The provider event identity (see the module docstring): same update -> same key."""
    updated_at = data.get("updatedAt")
    version = updated_at if isinstance(updated_at, str) and updated_at else "data:" + _canonical(data)
    identity = [PROVIDER, event_type, data.get("id"), data.get("status"), version]
    return hashlib.sha256(_canonical(identity).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- receiving


_events = WebhookEvent.__table__
# Built once (a Core statement with bound parameters): the request path pays for no ORM or compile work.
_STORE_EVENT = (
    pg_insert(_events)
    .values({column: bindparam(column) for column in (
        "id", "provider", "event_key", "event_type", "external_id", "external_status", "payload", "status",
        "attempts", "enqueue_count", "received_at", "enqueued_at")})
    .on_conflict_do_nothing(constraint="uq_webhook_events_provider_event_key")
    .returning(_events.c.id)
)


def receive_moonpay_webhook(*, parsed: ParsedWebhook, now: dt.datetime | None = None) -> ReceiveResult:
    """Store a verified event once (one INSERT ... ON CONFLICT DO NOTHING), then enqueue it."""
    now = now or utcnow()
    inserted = db.session.execute(_STORE_EVENT, {
        "id": uuid.uuid4(), "provider": PROVIDER, "event_key": parsed.event_key, "event_type": parsed.event_type,
        "external_id": parsed.transaction.id, "external_status": parsed.transaction.status,
        "payload": parsed.payload_text, "status": EventStatus.PENDING, "attempts": 0, "enqueue_count": 1,
        "received_at": now, "enqueued_at": now,
    }).scalar_one_or_none()
    db.session.commit()
    if inserted is None:
        return ReceiveResult(event_id=None, duplicate=True, enqueued=False)
    return ReceiveResult(event_id=inserted, duplicate=False,
                         enqueued=enqueue_event(event_id=inserted, generation=1))


def job_id_for(*, event_id: uuid.UUID, generation: int) -> str:
    """RQ job id for one enqueue of one event ([A-Za-z0-9_-] only)."""
    return f"webhook-{PROVIDER}-{event_id.hex}-{generation}"


def enqueue_event(*, event_id: uuid.UUID, generation: int) -> bool:
    """Put the processing job on RQ (call only after the commit); False when Redis refused."""
    from rq import Retry

    settings = current_app.config["SETTINGS"]
    try:
        get_queue(WEBHOOKS).enqueue(
            PROCESS_JOB, str(event_id),
            job_id=job_id_for(event_id=event_id, generation=generation),
            job_timeout=settings.rq_job_timeout_seconds,
            retry=Retry(max=len(RQ_RETRY_INTERVALS), interval=list(RQ_RETRY_INTERVALS)),
            result_ttl=3600, failure_ttl=7 * 24 * 3600,
            description=f"process {PROVIDER} webhook event {event_id}",
        )
    except RedisError as exc:
        # The row is committed: the sweeper enqueues it once it is older than the stale limit.
        log.warning("webhook_enqueue_failed", event_id=str(event_id), error=type(exc).__name__)
        record_webhook(provider=PROVIDER, stage="enqueue", outcome="redis_unavailable")
        return False
    return True


# --------------------------------------------------------------------------- recovery


@dataclass(frozen=True)
class MaintenanceResult:
    retried: int
    swept: int
    enqueue_failed: int


def run_webhook_maintenance(*, now: dt.datetime | None = None, batch: int = SWEEP_BATCH) -> MaintenanceResult:
    """The webhook-retry job: enqueue due retries, then re-enqueue stale pending events."""
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
    failed = sum(not enqueue_event(event_id=event_id, generation=generation)
                 for event_id, generation in due + stale)
    for outcome, claimed in (("retry_enqueued", due), ("swept", stale)):
        for _ in claimed:
            record_webhook(provider=PROVIDER, stage="maintenance", outcome=outcome)
    if due or stale:
        log.info("webhook_maintenance", retried=len(due), swept=len(stale), enqueue_failed=failed)
    return MaintenanceResult(retried=len(due), swept=len(stale), enqueue_failed=failed)


def _claim(condition, *, order_by, now: dt.datetime, batch: int) -> list[tuple[uuid.UUID, int]]:
    """Mark matching events pending-and-enqueued-now (SKIP LOCKED) and commit; return (id, generation)."""
    events = db.session.execute(
        select(WebhookEvent).where(condition).order_by(order_by).limit(batch)
        .with_for_update(skip_locked=True)
    ).scalars().all()
    claimed = []
    for event in events:
        event.status = EventStatus.PENDING
        event.next_attempt_at = None
        event.enqueued_at = now
        event.enqueue_count += 1
        claimed.append((event.id, event.enqueue_count))
    db.session.commit()
    return claimed


def reset_for_replay(*, event: WebhookEvent, now: dt.datetime) -> int:
    """Give a dead-lettered event a fresh set of attempts (caller holds its lock and commits)."""
    event.status = EventStatus.PENDING
    event.attempts = 0
    event.next_attempt_at = None
    event.processed_at = None
    event.outcome = None
    event.enqueued_at = now
    event.enqueue_count += 1
    return event.enqueue_count
