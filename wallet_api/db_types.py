"""Column types shared by every model, and the JSON text we store in JSONB columns."""
import datetime as dt
import json
import uuid
from decimal import Decimal

from sqlalchemy import DateTime, Numeric, Uuid, func
from sqlalchemy.orm import mapped_column

# NUMERIC(38,18): 20 integer digits and 18 decimals hold every supported currency exactly (ETH has 18).
Money = Numeric(38, 18, asdecimal=True)


def uuid_pk():
    return mapped_column(Uuid, primary_key=True, default=uuid.uuid4)


def timestamp_column():
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def metadata_json(value: dict) -> str:
    """JSON text for a JSONB metadata column: UUIDs, Decimals (as strings, never floats) and datetimes allowed."""
    return _METADATA_ENCODER.encode(value)


def _json_default(obj):
    if isinstance(obj, (uuid.UUID, Decimal)):
        return str(obj)
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON serialisable")


# One encoder: json.dumps with `default` builds a new one on every call (a ledger write has one).
_METADATA_ENCODER = json.JSONEncoder(default=_json_default)


__all__ = ["Money", "uuid_pk", "timestamp_column", "utcnow", "metadata_json", "Decimal"]
