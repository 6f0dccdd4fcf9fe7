"""Runs in the web request: parse a verified MoonPay webhook, store it once, ask for its processing.

See the pipeline's design overview in `wallet_api/onramp/__init__.py`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import bindparam
from sqlalchemy.dialects.postgresql import insert as pg_insert

from wallet_api.db_types import utcnow
from wallet_api.extensions import db
from wallet_api.onramp import moonpay
from wallet_api.onramp.drain_queue import request_drain
from wallet_api.onramp.models import EventStatus, WebhookEvent


class WebhookBodyError(ValueError):
    """A webhook body that is not a well-formed MoonPay buy event; `errors` maps field -> messages."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class ParsedWebhook:
    event_type: str
    transaction: moonpay.MoonPayTransaction
    event_key: str
    payload_text: str


@dataclass(frozen=True)
class ReceiveResult:
    event_id: uuid.UUID | None
    duplicate: bool
    enqueued: bool


# --------------------------------------------------------------------------- parsing


def parse_webhook_body(raw: bytes) -> ParsedWebhook:
    """Validate a raw MoonPay webhook body; WebhookBodyError with field errors otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookBodyError({"body": ["Not UTF-8 text."]}) from None
    try:
        body = moonpay.load_payload(text)
    except (ValueError, RecursionError):
        raise WebhookBodyError({"body": ["Not valid JSON."]}) from None
    if not isinstance(body, dict):
        raise WebhookBodyError({"body": ["Must be a JSON object."]})

    errors: dict[str, list[str]] = {}
    event_type = body.get("type")
    if event_type not in moonpay.EVENT_TYPES:
        errors["type"] = [f"Must be one of: {', '.join(moonpay.EVENT_TYPES)}."]
    data = body.get("data")
    transaction = None
    if not isinstance(data, dict):
        errors["data"] = ["Must be an object."]
    else:
        try:
            transaction = moonpay.MoonPayTransaction.from_payload(data)
        except ValueError as exc:
            field, _, message = str(exc).partition(": ")
            errors[f"data.{field}"] = [message or str(exc)]
        else:
            if transaction.status not in moonpay.STATUS:
                errors["data.status"] = [f"Must be one of: {', '.join(moonpay.STATUS)}."]
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
    identity = [moonpay.PROVIDER, event_type, data.get("id"), data.get("status"), version]
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
    """Store a verified event once (one INSERT ... ON CONFLICT DO NOTHING); ask for a drain after the commit."""
    now = now or utcnow()
    inserted = db.session.execute(_STORE_EVENT, {
        "id": uuid.uuid4(), "provider": moonpay.PROVIDER, "event_key": parsed.event_key,
        "event_type": parsed.event_type, "external_id": parsed.transaction.id,
        "external_status": parsed.transaction.status, "payload": parsed.payload_text,
        "status": EventStatus.PENDING, "attempts": 0, "enqueue_count": 1, "received_at": now, "enqueued_at": now,
    }).scalar_one_or_none()
    drain = request_drain() if inserted is not None else None
    db.session.commit()
    structlog.contextvars.bind_contextvars(external_id=parsed.transaction.id)
    if drain is None:
        return ReceiveResult(event_id=None, duplicate=True, enqueued=False)
    # The request's line names the event, and so do the lines applying it: one id joins them.
    structlog.contextvars.bind_contextvars(provider_event_id=str(inserted))
    return ReceiveResult(event_id=inserted, duplicate=False, enqueued=bool(drain.ok))
