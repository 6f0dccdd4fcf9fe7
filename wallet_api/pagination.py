"""Keyset pagination over (created_at, id), newest first: `{items, next_cursor}` like the wallet ledger.

The cursor is opaque to clients (URL-safe base64 of the last row's sort key); a page never
repeats a row when rows are added meanwhile. Used by listings whose model has `created_at` and
`id` (on-ramp transactions, the DLQ); the wallet ledger pages on entry ids instead.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, tuple_

from wallet_api.errors import Unprocessable
from wallet_api.extensions import db

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_cursor: str | None


def encode_cursor(created_at: dt.datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    """Parse a cursor made by encode_cursor; 422 on anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        created, _, row_id = raw.partition("|")
        created_at = dt.datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return created_at, uuid.UUID(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Unprocessable("Invalid cursor.", error="validation_error",
                            errors={"query": {"cursor": ["Invalid cursor."]}}) from None


def keyset_page(query: Select, model: Any, *, limit: int, cursor: str | None) -> Page:
    """Run `query` (selecting `model`) for one page, newest first, after `cursor`."""
    if cursor:
        created_at, last_id = decode_cursor(cursor)
        query = query.where(tuple_(model.created_at, model.id) < tuple_(created_at, last_id))
    rows = db.session.execute(
        query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)).scalars().all()
    next_cursor = encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    return Page(items=list(rows[:limit]), next_cursor=next_cursor)
