"""The alert log: one row per thing a human must look at."""
import datetime as dt
import enum
import uuid

from sqlalchemy import Boolean, CheckConstraint, DateTime, ForeignKey, Index, String, Text, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from wallet_api.db_types import timestamp_column, uuid_pk
from wallet_api.extensions import db


class Severity(str, enum.Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class AlertType(str, enum.Enum):
    WEBHOOK_FAILURE = "WEBHOOK_FAILURE"


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
