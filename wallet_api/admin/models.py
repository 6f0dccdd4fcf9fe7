"""The admin access log: every request to an admin route, allowed or refused, append-only."""
import datetime as dt
import uuid

from sqlalchemy import Index, Integer, String, Text, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from wallet_api.db_types import timestamp_column, uuid_pk
from wallet_api.extensions import db


class AdminAccessLog(db.Model):
    """Who called which admin action on what, from where, and how it ended (the response status).

    Written in the transaction of the action it records when the action commits (so there is no
    committed action without its record), otherwise on its own once the response is known
    (refusals: 401, 403, 404, 409, 422, 429...). UPDATE and DELETE are refused by a trigger and
    not granted to the application's role.
    """

    __tablename__ = "admin_access_log"
    __table_args__ = (
        Index("ix_admin_access_log_created", "created_at", "id"),
        Index("ix_admin_access_log_actor_created", "actor_id", "created_at"),
        Index("ix_admin_access_log_action_created", "action", "created_at"),
        Index("ix_admin_access_log_target", "target_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    created_at: Mapped[dt.datetime] = timestamp_column()
    # No foreign key: a record must be writable whatever the token claims (a refused call included).
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor_role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    target_id: Mapped[str | None] = mapped_column(String(255))
    meta: Mapped[dict] = mapped_column("metadata", JSONB, default=dict, server_default=text("'{}'::jsonb"))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(128))
    status_code: Mapped[int] = mapped_column(Integer)
