"""Keyset pagination over (created_at, id), newest first: `{items, next_cursor}` like the wallet ledger.

The cursor is opaque to clients (URL-safe base64 of the last row's sort key); a page never skips
or repeats a row when rows are added meanwhile. Used by the on-ramp and DLQ listings; a candidate
for a shared module once other domains need it.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from wallet_api.errors import Unprocessable

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
