"""One row per run of a background job: who or what started it, when, and how it ended."""
import datetime as dt
import uuid

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, String, Text, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from wallet_api.db_types import timestamp_column, uuid_pk
from wallet_api.extensions import db


class Trigger:
    SCHEDULED = "scheduled"  # rq-scheduler
    MANUAL = "manual"        # POST /admin/jobs/<name>/run
    CLI = "cli"              # flask reconcile-balance
    ALL = (SCHEDULED, MANUAL, CLI)


class RunStatus:
    QUEUED = "queued"        # requested, waiting for a worker
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"      # another run of the same job was in progress
    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED, SKIPPED)
    FINISHED = (SUCCEEDED, FAILED, SKIPPED)


def _in(column: str, values) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class JobRun(db.Model):
    __tablename__ = "job_runs"
    __table_args__ = (
        CheckConstraint(_in("trigger", Trigger.ALL), name="trigger_known"),
        CheckConstraint(_in("status", RunStatus.ALL), name="status_known"),
        CheckConstraint(f"(finished_at IS NOT NULL) = ({_in('status', RunStatus.FINISHED)})",
                        name="finished_has_time"),
        Index("ix_job_runs_job_created", "job_name", "created_at", "id"),
        Index("ix_job_runs_created", "created_at", "id"),
        Index("ix_job_runs_last_success", "job_name", "finished_at", postgresql_where=text("status = 'succeeded'")),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    job_name: Mapped[str] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"))
    created_at: Mapped[dt.datetime] = timestamp_column()
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    counts: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
