"""On-ramp transactions (our side of a MoonPay purchase), the webhook events that drive them, and
the dead letter queue where events that failed every retry wait for a human.

The webhook pipeline's design is described in `wallet_api/onramp/__init__.py`.
"""
import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import (CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint,
                        Uuid, text)
from sqlalchemy.orm import Mapped, mapped_column

from wallet_api.db_types import Money, timestamp_column, uuid_pk
from wallet_api.extensions import db


class OnrampStatus:
    """Local on-ramp statuses; MoonPay's camelCase names map onto these (see moonpay.STATUS)."""

    PENDING = "pending"
    WAITING_PAYMENT = "waiting_payment"
    WAITING_AUTHORIZATION = "waiting_authorization"
    COMPLETED = "completed"
    FAILED = "failed"
    ALL = (PENDING, WAITING_PAYMENT, WAITING_AUTHORIZATION, COMPLETED, FAILED)
    TERMINAL = (COMPLETED, FAILED)
    # Status only moves to a higher rank; equal non-terminal ranks may move sideways when the
    # provider's updatedAt is newer. Terminal states never change.
    RANK = {PENDING: 1, WAITING_PAYMENT: 1, WAITING_AUTHORIZATION: 1, COMPLETED: 2, FAILED: 2}


class DlqResolution:
    REPLAY = "replay"
    DISCARD = "discard"
    ALL = (REPLAY, DISCARD)


class EventStatus:
    """A stored webhook event's processing state."""

    PENDING = "pending"              # enqueued (or about to be); the sweeper re-enqueues it when stale
    RETRY_SCHEDULED = "retry_scheduled"  # last run failed; the retry job enqueues it at next_attempt_at
    PROCESSED = "processed"          # applied (or found to be a no-op); never run again
    DEAD_LETTERED = "dead_lettered"  # out of retries; parked in dead_letter_queue for a human
    ALL = (PENDING, RETRY_SCHEDULED, PROCESSED, DEAD_LETTERED)


def _in(column: str, values) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class OnrampTransaction(db.Model):
    """One purchase a user started through the MoonPay widget; its id is MoonPay's externalTransactionId."""

    __tablename__ = "onramp_transactions"
    __table_args__ = (
        CheckConstraint(_in("status", OnrampStatus.ALL), name="status_known"),
        CheckConstraint(_in("base_currency", ("USD", "EUR", "GBP")), name="base_currency_fiat"),
        CheckConstraint("base_amount > 0", name="base_amount_positive"),
        CheckConstraint("quote_currency_amount IS NULL OR quote_currency_amount > 0",
                        name="quote_amount_positive"),
        # A completed purchase always points at the ledger movement that credited it.
        CheckConstraint("status <> 'completed' OR (ledger_transaction_id IS NOT NULL "
                        "AND quote_currency_amount IS NOT NULL AND moonpay_transaction_id IS NOT NULL)",
                        name="completed_has_credit"),
        UniqueConstraint("moonpay_transaction_id", name="uq_onramp_transactions_moonpay_transaction_id"),
        UniqueConstraint("ledger_transaction_id", name="uq_onramp_transactions_ledger_transaction_id"),
        Index("ix_onramp_transactions_user_created", "user_id", "created_at", "id"),
        Index("ix_onramp_transactions_wallet_id", "wallet_id"),
        # The credit-spike checks sum the completions of a recent window, platform-wide and per user.
        Index("ix_onramp_transactions_completed_at", "completed_at", postgresql_where=text("status = 'completed'")),
        Index("ix_onramp_transactions_user_completed_at", "user_id", "completed_at",
              postgresql_where=text("status = 'completed'")),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"))
    wallet_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("wallets.id", ondelete="RESTRICT"))
    currency: Mapped[str] = mapped_column(String(10))
    base_currency: Mapped[str] = mapped_column(String(10))
    base_amount: Mapped[Decimal] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(32), default=OnrampStatus.PENDING,
                                        server_default=text(f"'{OnrampStatus.PENDING}'"))
    moonpay_transaction_id: Mapped[str | None] = mapped_column(String(255))
    crypto_transaction_id: Mapped[str | None] = mapped_column(String(512))
    quote_currency_amount: Mapped[Decimal | None] = mapped_column(Money)
    # MoonPay's baseCurrencyAmount of the completed purchase: the fiat actually paid (credit spikes).
    provider_base_amount: Mapped[Decimal | None] = mapped_column(Money)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    ledger_transaction_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("ledger_transactions.id", ondelete="RESTRICT"))
    # MoonPay's data.updatedAt of the last status applied: orders sideways moves between pending states.
    provider_updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = timestamp_column()
    updated_at: Mapped[dt.datetime] = timestamp_column()
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookEvent(db.Model):
    """One distinct provider event as received (raw body kept byte-exact) and its processing state."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_key", name="uq_webhook_events_provider_event_key"),
        CheckConstraint(_in("status", EventStatus.ALL), name="status_known"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        CheckConstraint("status <> 'retry_scheduled' OR next_attempt_at IS NOT NULL",
                        name="retry_has_time"),
        CheckConstraint("status <> 'processed' OR processed_at IS NOT NULL", name="processed_has_time"),
        # The retry job's and the sweeper's scans touch only the few unfinished rows.
        Index("ix_webhook_events_retry_due", "next_attempt_at",
              postgresql_where=text("status = 'retry_scheduled'")),
        Index("ix_webhook_events_pending_enqueued", "enqueued_at",
              postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_events_external_id", "provider", "external_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    provider: Mapped[str] = mapped_column(String(32))
    event_key: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(255))
    external_status: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32), default=EventStatus.PENDING,
                                        server_default=text(f"'{EventStatus.PENDING}'"))
    outcome: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    enqueue_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = timestamp_column()
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    processed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class DeadLetterQueue(db.Model):
    """A webhook event that failed every retry, parked with its payload until an admin replays or discards it."""

    __tablename__ = "dead_letter_queue"
    __table_args__ = (
        CheckConstraint("resolution IS NULL OR resolution IN ('replay', 'discard')", name="resolution_known"),
        CheckConstraint("(resolved_at IS NULL) = (resolution IS NULL)", name="resolution_has_time"),
        CheckConstraint("resolved_at IS NULL OR (resolved_by IS NOT NULL AND resolution_note IS NOT NULL)",
                        name="resolution_is_attributed"),
        # An event is parked at most once at a time; after a replay it may fail and be parked again.
        Index("uq_dead_letter_queue_unresolved_event", "event_id", unique=True,
              postgresql_where=text("resolved_at IS NULL")),
        Index("ix_dead_letter_queue_created", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    provider: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("webhook_events.id", ondelete="RESTRICT"))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    failure_reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = timestamp_column()
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"))
    resolution: Mapped[str | None] = mapped_column(String(16))
    resolution_note: Mapped[str | None] = mapped_column(Text)
