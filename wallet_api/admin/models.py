"""What needs a human: alerts, and provider events that ran out of retries (the dead letter queue)."""
import datetime as dt
import uuid

from sqlalchemy import (Boolean, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text, Uuid,
                        text)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from wallet_api.db_types import timestamp_column, uuid_pk
from wallet_api.extensions import db


class AlertType:
    WEBHOOK_FAILURE = "WEBHOOK_FAILURE"


class Severity:
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"
    ALL = (LOW, MEDIUM, HIGH, CRITICAL)


class DlqResolution:
    REPLAY = "replay"
    DISCARD = "discard"
    ALL = (REPLAY, DISCARD)


class AlertLog(db.Model):
    __tablename__ = "alert_log"
    __table_args__ = (
        # Types are added by later features; the format is fixed so they stay greppable constants.
        CheckConstraint("alert_type ~ '^[A-Z][A-Z0-9_]*$'", name="alert_type_format"),
        CheckConstraint("severity IN ('low', 'medium', 'high', 'critical')", name="severity_known"),
        CheckConstraint("resolved = (resolved_at IS NOT NULL)", name="resolved_has_time"),
        Index("ix_alert_log_unresolved", "created_at", postgresql_where=text("NOT resolved")),
        Index("ix_alert_log_type_created", "alert_type", "created_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    alert_type: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict] = mapped_column("metadata", JSONB, default=dict, server_default=text("'{}'::jsonb"))
    created_at: Mapped[dt.datetime] = timestamp_column()
    resolved: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"))
    resolution_note: Mapped[str | None] = mapped_column(Text)


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
