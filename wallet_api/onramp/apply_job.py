"""Runs in a worker: apply stored MoonPay webhook events to their on-ramp transactions, exactly once.

See the pipeline's design overview in `wallet_api/onramp/__init__.py`. In short: one database
transaction locks the event row, then the on-ramp transaction row, applies the forward-only
status change (crediting through `ledger.credit` for `completed`), and marks the event
processed. A failure rolls the whole transaction back and is recorded on the event in a new one,
after locking the event again and finding it as it was (no savepoints: they cost two round trips
per event on the path every event takes, for the rare one that fails).
"""
from __future__ import annotations

import datetime as dt
import functools
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
from sqlalchemy import Row, bindparam, select, text, update
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
from wallet_api.onramp.credit_spike import PLATFORM_CHECK_EVERY_SECONDS, USER_CHECK_EVERY_SECONDS, find_credit_spikes
from wallet_api.onramp.dead_letters import dead_letter
from wallet_api.onramp.drain_queue import DrainLease, helper_started, request_drain_now
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
    event = _lock_event(event_id)
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
    now = now or utcnow()
    outcome, credited_user = _process_locked(event, now=now)
    if credited_user is not None:
        _check_credit_spikes(user_ids={credited_user}, now=now)
    return outcome


def process_next_pending(*, credited_users: set[uuid.UUID], now: dt.datetime | None = None) -> str | None:
    """Claim the oldest pending event that no one else is applying (SKIP LOCKED) and apply it in one
    transaction; None when there is none. A credited user is added to `credited_users`, for the
    caller to check for credit spikes."""
    event = _claim_next()
    if event is None:
        db.session.rollback()
        return None
    outcome, credited_user = _process_locked(event, now=now or utcnow())
    if credited_user is not None:
        credited_users.add(credited_user)
    return outcome


@dataclass(frozen=True)
class DrainResult:
    processed: int
    more_left: bool  # stopped by the time budget or a shutdown with events still pending


# How long a stream drain waits for the next event after finding none, and how often it looks:
# at a steady stream, events arrive well inside this and one job serves them all.
LINGER_SECONDS = 0.2
LINGER_POLL_SECONDS = 0.02


def drain_pending(*, budget_seconds: float, should_stop: Callable[[], bool], helper: bool = False,
                  linger_seconds: float = LINGER_SECONDS) -> DrainResult:
    """The drain job: apply pending events, one transaction each, until none is left, `budget_seconds`
    have passed or the worker is shutting down (see drain_queue.py for the two kinds). A stream drain
    holds the drain lease while it works and lingers for the next event; a helper does neither. A
    backlog asks for a helper, so idle workers join in; work left over asks for a continuation. The
    users it credited are checked for credit spikes together, every USER_CHECK_EVERY_SECONDS and at
    the end (a drain killed in between leaves them to the wallet reconciliation job's check)."""
    lease = None if helper else DrainLease()
    if lease is None:
        helper_started()
    else:
        lease.hold()
    deadline = time.monotonic() + budget_seconds
    credited: set[uuid.UUID] = set()

    def out_of_time() -> bool:
        return should_stop() or time.monotonic() >= deadline

    try:
        processed, finished = _drain(lease, credited, out_of_time, linger_seconds)
    except BaseException:
        if lease is not None:
            lease.release()  # the job fails and RQ runs it again; new events queue drains meanwhile
        raise
    _check_credit_spikes(user_ids=credited)
    if not finished:
        request_drain_now(helper=helper)
    return DrainResult(processed=processed, more_left=not finished)


def _drain(lease: DrainLease | None, credited: set[uuid.UUID], out_of_time: Callable[[], bool],
           linger_seconds: float) -> tuple[int, bool]:
    """drain_pending's loop: how many events it applied, and whether it found none left (False when
    time ran out first). The lease, if any, is released when it returns."""
    processed = 0
    now = time.monotonic()
    next_backlog_check, next_check = now, now + USER_CHECK_EVERY_SECONDS
    while not out_of_time():
        if time.monotonic() >= next_backlog_check:
            if _pending_at_least(2):
                request_drain_now(helper=True)  # more than this drain's next event waits: let a worker join
            next_backlog_check = time.monotonic() + USER_CHECK_EVERY_SECONDS
        if credited and time.monotonic() >= next_check:
            _check_credit_spikes(user_ids=credited)
            credited.clear()
            next_check = time.monotonic() + USER_CHECK_EVERY_SECONDS
        if lease is not None:
            lease.renew_if_due()
        if process_next_pending(credited_users=credited) is not None:
            processed += 1
            continue
        if lease is None:
            return processed, True
        if _linger(linger_seconds, credited, out_of_time):
            processed += 1
            continue
        # None came. Let go of the lease, then look once more: an event whose receipt saw the lease
        # was committed before the release, and this look sees it.
        lease.release()
        if out_of_time():
            return processed, False  # the continuation looks for it
        if process_next_pending(credited_users=credited) is None:
            return processed, True
        processed += 1
        lease.hold()
    if lease is not None:
        lease.release()
    return processed, False


def _linger(seconds: float, credited: set[uuid.UUID], out_of_time: Callable[[], bool]) -> bool:
    """Wait up to `seconds` for an event to claim, and apply it; False if none came. Looking is a claim
    (SKIP LOCKED): an event another drain holds is not one to wait for."""
    until = time.monotonic() + seconds
    while time.monotonic() < until and not out_of_time():
        time.sleep(LINGER_POLL_SECONDS)
        if process_next_pending(credited_users=credited) is not None:
            return True
    return False


def _pending_at_least(count: int) -> bool:
    found = db.session.execute(text(
        "SELECT count(*) FROM (SELECT 1 FROM webhook_events WHERE status = 'pending' LIMIT :n) AS waiting"),
        {"n": count}).scalar_one()
    db.session.rollback()
    return found >= count


# One round trip: our lock timeout for this transaction (a worker that died mid-job must not leave
# its backend holding our locks for long), then the event row, locked. psycopg2 sends both as one
# query and returns the rows of the last.
_EVENT_COLUMNS = ", ".join(column.name for column in WebhookEvent.__table__.columns)
_SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', :lock_timeout, true);"
_BY_ID = (select(WebhookEvent).execution_options(populate_existing=True).from_statement(
    text(f"{_SET_LOCK_TIMEOUT} SELECT {_EVENT_COLUMNS} FROM webhook_events WHERE id = :id FOR UPDATE")))
# The path every event takes reads plain rows and writes with Core statements: the ORM's loading
# and unit of work cost more Python than the statements cost the database.
_NEXT_PENDING = text(f"""{_SET_LOCK_TIMEOUT} SELECT {_EVENT_COLUMNS} FROM webhook_events
    WHERE status = 'pending' ORDER BY enqueued_at LIMIT 1 FOR UPDATE SKIP LOCKED""")
_events, _onramps = WebhookEvent.__table__, OnrampTransaction.__table__
_ONRAMP_FOR_UPDATE = select(_onramps).where(_onramps.c.id == bindparam("id")).with_for_update()
_MARK_PROCESSED = update(_events).where(_events.c.id == bindparam("event_id")).values(
    status=EventStatus.PROCESSED, outcome=bindparam("event_outcome"), attempts=bindparam("event_attempts"),
    last_attempt_at=bindparam("now"), processed_at=bindparam("now"), next_attempt_at=None)


def _lock_timeout() -> dict[str, str]:
    return {"lock_timeout": f"{int(current_app.config['SETTINGS'].ledger_lock_timeout_ms)}ms"}


def _lock_event(event_id: uuid.UUID) -> WebhookEvent | None:
    """The event, locked and read fresh, with our lock timeout set for this transaction."""
    return db.session.execute(_BY_ID, {**_lock_timeout(), "id": event_id}).scalar_one_or_none()


def _claim_next() -> Row | None:
    """The oldest pending event no one else holds, locked, as a plain row (see _NEXT_PENDING)."""
    return db.session.execute(_NEXT_PENDING, _lock_timeout()).one_or_none()


@functools.cache
def _finish_statement(onramp_columns: tuple[str, ...]):
    """Mark the event processed and, in the same statement, write the on-ramp row's changed columns."""
    if not onramp_columns:
        return _MARK_PROCESSED
    changes = update(_onramps).where(_onramps.c.id == bindparam("onramp_id")).values(
        {column: bindparam(f"onramp_{column}") for column in onramp_columns})
    return _MARK_PROCESSED.add_cte(changes.cte("onramp_changes"))


def _finish(*, event_id: uuid.UUID, outcome: str, attempts: int, now: dt.datetime, onramp_id: uuid.UUID,
            changes: dict) -> None:
    columns = tuple(sorted(changes))
    db.session.connection().execute(_finish_statement(columns), {
        "event_id": event_id, "event_outcome": outcome, "event_attempts": attempts, "now": now,
        "onramp_id": onramp_id, **{f"onramp_{column}": changes[column] for column in columns}})


def _process_locked(event, *, now: dt.datetime) -> tuple[str, uuid.UUID | None]:
    """Apply a locked, unprocessed event (read only: an ORM object or a row) and commit: processed,
    or a failure recorded for a retry. Returns the outcome and the user credited, if any."""
    settings = current_app.config["SETTINGS"]
    session = db.session
    # Every line about this event names it; nothing bound while applying it outlives it.
    with timed() as elapsed, scoped_context(provider_event_id=str(event.id), external_id=event.external_id):
        event_id, seen = event.id, (event.status, event.attempts)
        attempt = event.attempts + 1
        log_context = dict(event_id=str(event.id), external_status=event.external_status, attempt=attempt)
        credited_user = None
        try:
            outcome, onramp, changes = _apply(event=event, now=now)
            credited_user = onramp.user_id if outcome == "credited" else None
            _finish(event_id=event_id, outcome=outcome, attempts=attempt, now=now, onramp_id=onramp.id,
                    changes=changes)
            session.commit()
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, so a bug ends in the DLQ too
            if isinstance(exc, _INTERRUPTIONS) or getattr(exc, "connection_invalidated", False):
                raise  # not the event's fault: roll everything back and let RQ run the job again
            session.rollback()
            credited_user = None
            reason = _describe(exc)
            outcome = _record_failure_again(event_id=event_id, seen=seen, attempt=attempt, reason=reason,
                                            now=now, settings=settings)
            log.warning("webhook_processing_failed", outcome=outcome, reason=reason, **log_context)
        else:
            log.info("webhook_processed", outcome=outcome, **log_context)
        record_webhook(provider=PROVIDER, stage="process", outcome=outcome, duration_s=elapsed())
    return outcome, credited_user


def _record_failure_again(*, event_id: uuid.UUID, seen: tuple[str, int], attempt: int, reason: str,
                          now: dt.datetime, settings) -> str:
    """After the failed attempt was rolled back: lock the event again and record the failure, unless
    someone else moved it on meanwhile (then this attempt never happened)."""
    event = _lock_event(event_id)
    if event is None or (event.status, event.attempts) != seen:
        status = event.status if event is not None else "missing"
        db.session.rollback()
        return f"already_{status}"
    event.attempts, event.last_attempt_at = attempt, now
    outcome = _record_failure(event=event, reason=reason, now=now, settings=settings)
    db.session.commit()
    return outcome


def _platform_check_due() -> bool:
    """True for one credit per PLATFORM_CHECK_EVERY_SECONDS across all workers (a Redis flag); true
    when Redis cannot say, since checking too often costs time and missing a spike costs money."""
    try:
        return bool(redis_connection().set(PLATFORM_CHECKED, "1", nx=True, ex=PLATFORM_CHECK_EVERY_SECONDS))
    except RedisError:
        return True


def _check_credit_spikes(*, user_ids: set[uuid.UUID], now: dt.datetime | None = None) -> None:
    """After the credits' own commits: a failing check must never undo or retry a credit."""
    if not user_ids:
        return
    try:
        # Nearly every check finds nothing: read outside a transaction (no BEGIN, no COMMIT on the
        # worker's hot path) and open one only to raise what was found.
        db.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        specs = find_credit_spikes(user_ids=user_ids, now=now or utcnow(), platform=_platform_check_due())
        db.session.commit()
        if specs:
            raise_alerts(specs)
            db.session.commit()
    except Exception:  # noqa: BLE001 - the wallet reconciliation job checks again
        db.session.rollback()
        log.exception("credit_spike_check_failed", user_ids=sorted(str(user) for user in user_ids))


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


def _apply(*, event, now: dt.datetime) -> tuple[str, Row, dict]:
    """Check the event against its locked on-ramp transaction and apply it: the outcome, the on-ramp
    row as it was, and the columns of that row to change (written by `_finish`)."""
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
            return f"already_{current}", onramp, {}
        if new_status not in OnrampStatus.TERMINAL:
            return "stale_status_ignored", onramp, {}  # a late pending never overwrites completed/failed
        raise ProcessingError(
            f"conflicting terminal status: the on-ramp transaction is {current}, MoonPay now says {tx.status}")

    provider_updated_at = _parse_time(tx.updated_at)
    if new_status == OnrampStatus.COMPLETED:
        outcome, changes = _complete(event=event, onramp=onramp, tx=tx, now=now,
                                     provider_updated_at=provider_updated_at)
        return outcome, onramp, changes

    if (new_status not in OnrampStatus.TERMINAL and provider_updated_at is not None
            and onramp.provider_updated_at is not None and provider_updated_at < onramp.provider_updated_at):
        return "stale_status_ignored", onramp, {}  # same rank, older news
    changes = {"moonpay_transaction_id": tx.id, "status": new_status, "updated_at": now,
               "provider_updated_at": provider_updated_at or onramp.provider_updated_at}
    if tx.crypto_transaction_id:
        changes["crypto_transaction_id"] = tx.crypto_transaction_id
    if new_status == OnrampStatus.FAILED:
        changes["failure_reason"] = (tx.failure_reason or "failed at MoonPay")[:MAX_ERROR_LENGTH]
        changes["failed_at"] = now
        return "marked_failed", onramp, changes
    return f"status_{new_status}", onramp, changes


def _locked_onramp(tx: MoonPayTransaction) -> Row:
    if tx.external_transaction_id is None:
        raise ProcessingError("data.externalTransactionId is missing: not a purchase started through our widget")
    try:
        onramp_id = uuid.UUID(tx.external_transaction_id)
    except ValueError:
        raise ProcessingError(f"unknown on-ramp transaction {tx.external_transaction_id!r}") from None
    onramp = db.session.connection().execute(_ONRAMP_FOR_UPDATE, {"id": onramp_id}).one_or_none()
    if onramp is None:
        raise ProcessingError(f"unknown on-ramp transaction {onramp_id}")
    return onramp


def _complete(*, event, onramp: Row, tx: MoonPayTransaction, now: dt.datetime,
              provider_updated_at: dt.datetime | None) -> tuple[str, dict]:
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
            commit=False, savepoint=False,  # any failure rolls the whole transaction back
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
    changes = {"status": OnrampStatus.COMPLETED, "moonpay_transaction_id": tx.id,
               "crypto_transaction_id": tx.crypto_transaction_id or onramp.crypto_transaction_id,
               "quote_currency_amount": amount, "provider_base_amount": tx.base_currency_amount,
               "ledger_transaction_id": result.transaction_id, "completed_at": now, "updated_at": now,
               "provider_updated_at": provider_updated_at or onramp.provider_updated_at}
    return ("credit_replayed" if result.replayed else "credited"), changes


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
