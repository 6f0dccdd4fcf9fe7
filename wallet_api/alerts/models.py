"""The alert log: one row per thing a human must look at.

An alert is about a *subject* (a wallet, a MoonPay transaction, a job...): while an alert of one
type is open for a subject, raising it again bumps `occurrences` and `last_seen_at` instead of
adding a row (a partial UNIQUE index on open alerts makes that hold under concurrency), so a
job that finds the same problem every 15 minutes does not bury the operator.
"""
import datetime as dt
import enum
import uuid

from sqlalchemy import Boolean, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text, Uuid, text
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
    """Each type has one severity (DESIGN.md); the runbook for each is in docs/RECONCILIATION.md."""

    BALANCE_MISMATCH = "BALANCE_MISMATCH"
    WEBHOOK_FAILURE = "WEBHOOK_FAILURE"
    JOB_CRASH = "JOB_CRASH"
    CREDIT_SPIKE = "CREDIT_SPIKE"
    PROVIDER_MISMATCH = "PROVIDER_MISMATCH"

    @property
    def severity(self) -> Severity:
        return SEVERITY[self]


SEVERITY = {
    AlertType.BALANCE_MISMATCH: Severity.CRITICAL,
    AlertType.WEBHOOK_FAILURE: Severity.HIGH,
    AlertType.JOB_CRASH: Severity.CRITICAL,
    AlertType.CREDIT_SPIKE: Severity.MEDIUM,
    AlertType.PROVIDER_MISMATCH: Severity.HIGH,
}
# Posted to ALERT_WEBHOOK_URL when raised; lower severities wait in the admin API.
NOTIFIED_SEVERITIES = (Severity.CRITICAL, Severity.HIGH)


def _in(column: str, values) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class AlertLog(db.Model):
    __tablename__ = "alert_log"
    __table_args__ = (
        CheckConstraint(_in("alert_type", AlertType), name="alert_type_known"),
        CheckConstraint(_in("severity", Severity), name="severity_known"),
        CheckConstraint("resolved = (resolved_at IS NOT NULL)", name="resolved_has_time"),
        CheckConstraint("NOT resolved OR (resolved_by IS NOT NULL AND resolution_note IS NOT NULL)",
                        name="resolution_is_attributed"),
        CheckConstraint("occurrences >= 1", name="occurrences_positive"),
        # At most one open alert per (type, subject): what `raise_alerts` upserts on.
        Index("uq_alert_log_open_subject", "alert_type", "subject", unique=True,
              postgresql_where=text("NOT resolved")),
        Index("ix_alert_log_unresolved", "created_at", "id", postgresql_where=text("NOT resolved")),
        Index("ix_alert_log_type_created", "alert_type", "created_at"),
        Index("ix_alert_log_unnotified", "created_at", postgresql_where=text("notified_at IS NULL AND NOT resolved")),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    alert_type: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict] = mapped_column("metadata", JSONB, default=dict, server_default=text("'{}'::jsonb"))
    occurrences: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    created_at: Mapped[dt.datetime] = timestamp_column()
    last_seen_at: Mapped[dt.datetime] = timestamp_column()
    notified_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    notify_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    resolved: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"))
    resolution_note: Mapped[str | None] = mapped_column(Text)
