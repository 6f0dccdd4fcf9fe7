"""Cursor pagination, the same everywhere: `?limit=&cursor=` -> `{items, next_cursor}`.

A cursor is opaque to clients: URL-safe base64 of the last row's sort key. Pages are keyset
pages (WHERE sort key < cursor), so a page never repeats or skips a row when rows are added
meanwhile. Listings of models with `created_at` and `id` use `keyset_page` (newest first); the
wallet ledger pages on entry ids with the same codec.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate
from sqlalchemy import Select, tuple_

from wallet_api.errors import Unprocessable
from wallet_api.extensions import db

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_LENGTH = 200
_SEPARATOR = "|"


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_cursor: str | None


class InvalidCursor(Unprocessable):
    error = "invalid_cursor"

    def __init__(self):
        message = "Invalid cursor: pass the next_cursor value of a previous page unchanged."
        super().__init__(message, errors={"query": {"cursor": [message]}})


def encode_cursor(*values: object) -> str:
    """An opaque cursor holding `values` (their str() must not contain '|')."""
    raw = _SEPARATOR.join(str(value) for value in values)
    return base64.urlsafe_b64encode(raw.encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, *parsers: Callable[[str], Any]) -> tuple:
    """The values of a cursor made by `encode_cursor`, each read by its parser; 422 on anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        parts = raw.split(_SEPARATOR)
        if len(parts) != len(parsers):
            raise ValueError(raw)
        return tuple(parse(part) for parse, part in zip(parsers, parts))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise InvalidCursor() from None


def aware_datetime(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("naive timestamp")
    return value


def positive_bigint(text: str) -> int:
    value = int(text)
    if not 0 < value < 2**63:
        raise ValueError(text)
    return value


class PageLimit(fields.Integer):
    """`limit`: ASCII digits only (int() would also read e.g. Arabic-Indic digits), 1..MAX_LIMIT."""

    def __init__(self, **kwargs):
        super().__init__(load_default=DEFAULT_LIMIT, validate=validate.Range(
            min=1, max=MAX_LIMIT, error=f"limit must be between 1 and {MAX_LIMIT}."), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and not (value.isascii() and value.isdigit()):
            raise ValidationError("limit must be a whole number written with the digits 0-9.")
        return super()._deserialize(value, attr, data, **kwargs)


class PageQuerySchema(Schema):
    """`?limit=&cursor=` of every paginated list."""

    limit = PageLimit()
    cursor = fields.String(load_default=None, validate=validate.Length(min=1, max=MAX_CURSOR_LENGTH),
                           metadata={"description": "next_cursor of the previous page (opaque)."})


def page_schema(item_schema: type[Schema], name: str) -> type[Schema]:
    """The `{items, next_cursor}` response schema of a list of `item_schema`, named `name` in OpenAPI."""
    return Schema.from_dict({
        "items": fields.List(fields.Nested(item_schema), dump_only=True),
        "next_cursor": fields.String(dump_only=True, allow_none=True, metadata={
            "description": "Pass as `cursor` for the next (older) page; null on the last page."}),
    }, name=name)


def keyset_page(query: Select, model: Any, *, limit: int, cursor: str | None) -> Page:
    """Run `query` (selecting `model`) for one page, newest first, after `cursor`."""
    if cursor:
        created_at, last_id = decode_cursor(cursor, aware_datetime, uuid.UUID)
        query = query.where(tuple_(model.created_at, model.id) < tuple_(created_at, last_id))
    rows = db.session.execute(
        query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)).scalars().all()
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = encode_cursor(last.created_at.isoformat(), last.id) if last is not None else None
    return Page(items=list(rows[:limit]), next_cursor=next_cursor)
