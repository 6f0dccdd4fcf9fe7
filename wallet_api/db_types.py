"""Column types shared by every model."""
import datetime as dt
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


__all__ = ["Money", "uuid_pk", "timestamp_column", "utcnow", "Decimal"]
