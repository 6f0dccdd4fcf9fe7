"""Runs in a worker: apply stored MoonPay webhook events to their on-ramp transactions, exactly once.

See the pipeline's design overview in `wallet_api/onramp/__init__.py`. In short: one database
transaction locks the event row, then the on-ramp transaction row, applies the forward-only
status change (crediting through `ledger.credit` for `completed`), and marks the event
processed; a failure rolls back to a savepoint and is recorded on the event instead.
"""
from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import DecimalException

import structlog
from flask import current_app
from rq.exceptions import ShutDownImminentException
from redis.exceptions import RedisError
from rq.timeouts import BaseTimeoutException
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError
from structlog.contextvars import bind_contextvars

from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import raise_alert, raise_alerts
from wallet_api.db_types import utcnow
from wallet_api.errors import ApiError, describe_exception
from wallet_api.extensions import db
from wallet_api.logging import scoped_context
from wallet_api.metrics import record_webhook, timed
from wallet_api.onramp import moonpay
from wallet_api.onramp.credit_spike import PLATFORM_CHECK_EVERY_SECONDS, find_credit_spikes
from wallet_api.onramp.dead_letters import dead_letter
from wallet_api.onramp.drain_queue import drain_started, request_drain_now
from wallet_api.onramp.models import EventStatus, OnrampStatus, OnrampTransaction, WebhookEvent
from wallet_api.onramp.moonpay import PROVIDER, MoonPayTransaction
from wallet_api.queues import redis_connection
from wallet_api.wallets import amounts, ledger
from wallet_api.wallets.models import SystemAccount

log = structlog.get_logger(__name__)

MAX_ERROR_LENGTH = 2000
PLATFORM_CHECKED = "wallet_api:credit-spike:platform-checked"


# The job was stopped (warm shutdown, job timeout), not refused: these must not consume an attempt.
_INTERRUPTIONS = (ShutDownImminentException, BaseTimeoutException)


class ProcessingError(Exception):
    """The event cannot be applied as it stands: recorded on the event, retried, then dead-lettered."""


def process_event(*, event_id: uuid.UUID, now: dt.datetime | None = None) -> str:
    """Apply one stored event, by id, in one transaction; return the outcome (idempotent)."""
    event = _lock(select(WebhookEvent).where(WebhookEvent.id == event_id).with_for_update())
    if event is None:
        db.session.rollback()
        log.warning("webhook_event_missing", event_id=str(event_id))
        record_webhook(provider=PROVIDER, stage="process", outcome="missing")
        return "missing"
    if event.status in (EventStatus.PROCESSED, EventStatus.DEAD_LETTERED):
        status = event.status
        db.session.rollback()
        record_webhook(provider=PROVIDER, stage="process", outcome=f"already_{status}")
        return f"already_{status}"
    return _process_locked(event, now=now or utcnow())


def process_next_pending(*, now: dt.datetime | None = None) -> str | None:
    """Claim the oldest pending event that no one else is applying (SKIP LOCKED) and apply it in one
    transaction; None when there is none."""
    event = _lock(select(WebhookEvent).where(WebhookEvent.status == EventStatus.PENDING)
                  .order_by(WebhookEvent.enqueued_at).limit(1).with_for_update(skip_locked=True))
    if event is None:
        db.session.rollback()
        return None
    return _process_locked(event, now=now or utcnow())


@dataclass(frozen=True)
class DrainResult:
    processed: int
    more_left: bool  # stopped by the time budget or a shutdown with events still pending


def drain_pending(*, budget_seconds: float, should_stop: Callable[[], bool]) -> DrainResult:
    """The drain job: apply pending events, one transaction each, until none is left, `budget_seconds`
    have passed or the worker is shutting down. A backlog asks for another drain at once, so idle
    workers join in; work left over asks for the next one (see drain_queue.py)."""
    drain_started()
    if _pending_at_least(2):
        request_drain_now()  # more than this drain's next event waits: let another worker join now
    deadline = time.monotonic() + budget_seconds
    processed = 0
    while not should_stop() and time.monotonic() < deadline:
        if process_next_pending() is None:
            return DrainResult(processed=processed, more_left=False)
        processed += 1
    request_drain_now()
    return DrainResult(processed=processed, more_left=True)


def _pending_at_least(count: int) -> bool:
    found = db.session.execute(text(
        "SELECT count(*) FROM (SELECT 1 FROM webhook_events WHERE status = 'pending' LIMIT :n) AS waiting"),
        {"n": count}).scalar_one()
    db.session.rollback()
    return found >= count


def _lock(query) -> WebhookEvent | None:
    """The event row of `query`, locked, read fresh, with our lock timeout set for this transaction."""
    # A worker that died mid-job must not leave its backend holding our locks for long.
    timeout_ms = int(current_app.config["SETTINGS"].ledger_lock_timeout_ms)
    db.session.execute(text(f"SET LOCAL lock_timeout = {timeout_ms}"))
    return db.session.execute(query.execution_options(populate_existing=True)).scalar_one_or_none()


def _process_locked(event: WebhookEvent, *, now: dt.datetime) -> str:
    """Apply a locked, unprocessed event and commit: processed, or a failure recorded for a retry."""
    settings = current_app.config["SETTINGS"]
    session = db.session
    # Every line about this event names it; nothing bound while applying it outlives it.
    with timed() as elapsed, scoped_context(provider_event_id=str(event.id), external_id=event.external_id):
        # Counted after the savepoint, in the event's one UPDATE: begin_nested flushes pending changes,
        # so counting first would cost a round trip of its own. A crash rolls either back the same.
        attempt = event.attempts + 1
        log_context = dict(event_id=str(event.id), external_status=event.external_status, attempt=attempt)
        credited_user = None
        try:
            with session.begin_nested():
                outcome, onramp = _apply(event=event, now=now)
                credited_user = onramp.user_id if outcome == "credited" else None
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, so a bug ends in the DLQ too
            if isinstance(exc, _INTERRUPTIONS) or getattr(exc, "connection_invalidated", False):
                raise  # not the event's fault: roll everything back and let RQ run the job again
            reason = _describe(exc)
            event.attempts, event.last_attempt_at = attempt, now
            outcome = _record_failure(event=event, reason=reason, now=now, settings=settings)
            session.commit()
            log.warning("webhook_processing_failed", outcome=outcome, reason=reason, **log_context)
        else:
            event.attempts, event.last_attempt_at = attempt, now
            event.status = EventStatus.PROCESSED
            event.outcome = outcome
            event.processed_at = now
            event.next_attempt_at = None
            session.commit()
            log.info("webhook_processed", outcome=outcome, **log_context)
        record_webhook(provider=PROVIDER, stage="process", outcome=outcome, duration_s=elapsed())
    if credited_user is not None:
        _check_credit_spikes(user_id=credited_user, now=now)
    return outcome


def _platform_check_due() -> bool:
    """True for one credit per PLATFORM_CHECK_EVERY_SECONDS across all workers (a Redis flag); true
    when Redis cannot say, since checking too often costs time and missing a spike costs money."""
    try:
        return bool(redis_connection().set(PLATFORM_CHECKED, "1", nx=True, ex=PLATFORM_CHECK_EVERY_SECONDS))
    except RedisError:
        return True


def _check_credit_spikes(*, user_id: uuid.UUID, now: dt.datetime) -> None:
    """After the credit's own commit: a failing check must never undo or retry a credit."""
    try:
        # Nearly every check finds nothing: read outside a transaction (no BEGIN, no COMMIT on the
        # worker's hot path) and open one only to raise what was found.
        db.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        specs = find_credit_spikes(user_id=user_id, now=now, platform=_platform_check_due())
        db.session.commit()
        if specs:
            raise_alerts(specs)
            db.session.commit()
    except Exception:  # noqa: BLE001 - the wallet reconciliation job checks again
        db.session.rollback()
        log.exception("credit_spike_check_failed", user_id=str(user_id))


def _describe(exc: Exception) -> str:
    if isinstance(exc, ProcessingError):
        return str(exc)[:MAX_ERROR_LENGTH]
    reason = describe_exception(exc, limit=MAX_ERROR_LENGTH)
    return reason if isinstance(exc, (ApiError, SQLAlchemyError)) else f"unexpected error: {reason}"[:MAX_ERROR_LENGTH]


def _record_failure(*, event: WebhookEvent, reason: str, now: dt.datetime, settings) -> str:
    """Schedule the next retry, or park the event in the DLQ and alert when retries are used up."""
    event.last_error = reason
    retries_used = event.attempts - 1
    if retries_used >= settings.webhook_max_retries:
        event.status = EventStatus.DEAD_LETTERED
        event.next_attempt_at = None
        event.outcome = "dead_lettered"
        dead_letter(event=event, failure_reason=reason)
        raise_alert(
            alert_type=AlertType.WEBHOOK_FAILURE, subject=f"event:{event.id}",
            title=f"{event.provider} webhook failed {event.attempts} times",
            message=f"Event {event.id} ({event.event_type}, {event.external_status}) for "
                    f"{event.provider} transaction {event.external_id} was moved to the dead letter "
                    f"queue: {reason}",
            metadata={"provider": event.provider, "external_id": event.external_id,
                      "event_id": str(event.id), "failure_reason": reason, "attempts": event.attempts})
        return "dead_lettered"
    # Delay before retry n (1-based, WEBHOOK_RETRY_BACKOFF_SECONDS); retries beyond the list reuse the last.
    backoff = settings.webhook_retry_backoff_seconds
    delay = dt.timedelta(seconds=backoff[min(retries_used, len(backoff) - 1)])
    event.status = EventStatus.RETRY_SCHEDULED
    event.next_attempt_at = now + delay
    event.outcome = "retry_scheduled"
    return "retry_scheduled"


# --------------------------------------------------------------------------- applying


def _apply(*, event: WebhookEvent, now: dt.datetime) -> tuple[str, OnrampTransaction]:
    payload = moonpay.load_payload(event.payload)
    tx = MoonPayTransaction.from_payload(payload["data"])
    new_status = moonpay.STATUS.get(tx.status)
    if new_status is None:
        raise ProcessingError(f"unknown MoonPay status {tx.status!r}")
    onramp = _locked_onramp(tx)
    bind_contextvars(user_id=str(onramp.user_id))  # until this event is done (see _process_locked)
    if tx.external_customer_id is not None and tx.external_customer_id != str(onramp.user_id):
        raise ProcessingError("externalCustomerId does not match the on-ramp transaction's user")
    if onramp.moonpay_transaction_id is not None and onramp.moonpay_transaction_id != tx.id:
        raise ProcessingError(
            f"on-ramp transaction {onramp.id} is already bound to MoonPay transaction "
            f"{onramp.moonpay_transaction_id}; refusing a second one ({tx.id})")
    if tx.currency_code is not None and moonpay.currency_for_code(tx.currency_code) != onramp.currency:
        raise ProcessingError(
            f"currency mismatch: MoonPay says {tx.currency_code!r}, the on-ramp wallet holds {onramp.currency}")

    current = onramp.status
    if current in OnrampStatus.TERMINAL:
        if new_status == current:
            return f"already_{current}", onramp
        if new_status not in OnrampStatus.TERMINAL:
            return "stale_status_ignored", onramp  # a late pending never overwrites completed/failed
        raise ProcessingError(
            f"conflicting terminal status: the on-ramp transaction is {current}, MoonPay now says {tx.status}")

    provider_updated_at = _parse_time(tx.updated_at)
    if new_status == OnrampStatus.COMPLETED:
        return _complete(event=event, onramp=onramp, tx=tx, now=now, provider_updated_at=provider_updated_at), onramp

    if (new_status not in OnrampStatus.TERMINAL and provider_updated_at is not None
            and onramp.provider_updated_at is not None and provider_updated_at < onramp.provider_updated_at):
        return "stale_status_ignored", onramp  # same rank, older news
    onramp.moonpay_transaction_id = tx.id
    onramp.status = new_status
    onramp.updated_at = now
    onramp.provider_updated_at = provider_updated_at or onramp.provider_updated_at
    if tx.crypto_transaction_id:
        onramp.crypto_transaction_id = tx.crypto_transaction_id
    if new_status == OnrampStatus.FAILED:
        onramp.failure_reason = (tx.failure_reason or "failed at MoonPay")[:MAX_ERROR_LENGTH]
        onramp.failed_at = now
        return "marked_failed", onramp
    return f"status_{new_status}", onramp


def _locked_onramp(tx: MoonPayTransaction) -> OnrampTransaction:
    if tx.external_transaction_id is None:
        raise ProcessingError("data.externalTransactionId is missing: not a purchase started through our widget")
    try:
        onramp_id = uuid.UUID(tx.external_transaction_id)
    except ValueError:
        raise ProcessingError(f"unknown on-ramp transaction {tx.external_transaction_id!r}") from None
    onramp = db.session.execute(
        select(OnrampTransaction).where(OnrampTransaction.id == onramp_id).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if onramp is None:
        raise ProcessingError(f"unknown on-ramp transaction {onramp_id}")
    return onramp


def _complete(*, event: WebhookEvent, onramp: OnrampTransaction, tx: MoonPayTransaction, now: dt.datetime,
              provider_updated_at: dt.datetime | None) -> str:
    if tx.quote_currency_amount is None:
        raise ProcessingError("data.quoteCurrencyAmount is missing on a completed transaction")
    try:
        # MoonPay's JSON numbers may carry insignificant trailing zeros; the value is never rounded.
        amount = tx.quote_currency_amount.normalize(amounts.MONEY_CONTEXT)
        result = ledger.credit(
            wallet_id=onramp.wallet_id, amount=amount,
            idempotency_key=f"webhook:moonpay:{tx.id}:{onramp.wallet_id}:credit",
            kind="onramp_credit", counter_account=SystemAccount.MOONPAY_CLEARING,
            reference=f"moonpay:{tx.id}",
            metadata={"moonpay_transaction_id": tx.id, "crypto_transaction_id": tx.crypto_transaction_id,
                      "onramp_transaction_id": str(onramp.id), "event_id": str(event.id)},
            commit=False,
        )
    except DecimalException:
        raise ProcessingError(f"data.quoteCurrencyAmount {tx.quote_currency_amount} is out of range") from None
    except ApiError as exc:
        if exc.error == "invalid_precision":
            raise ProcessingError(f"data.quoteCurrencyAmount {tx.quote_currency_amount}: {exc.message} "
                                  "(refusing to round)") from None
        raise ProcessingError(f"data.quoteCurrencyAmount {tx.quote_currency_amount}: {exc.message}") from None
    if result.currency != onramp.currency:
        raise ProcessingError(f"currency mismatch: wallet {onramp.wallet_id} holds {result.currency}, "
                              f"the on-ramp transaction is in {onramp.currency}")
    onramp.status = OnrampStatus.COMPLETED
    onramp.moonpay_transaction_id = tx.id
    onramp.crypto_transaction_id = tx.crypto_transaction_id or onramp.crypto_transaction_id
    onramp.quote_currency_amount = amount
    onramp.provider_base_amount = tx.base_currency_amount
    onramp.ledger_transaction_id = result.transaction_id
    onramp.completed_at = now
    onramp.updated_at = now
    onramp.provider_updated_at = provider_updated_at or onramp.provider_updated_at
    return "credit_replayed" if result.replayed else "credited"


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
