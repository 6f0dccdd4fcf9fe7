"""Money amounts: parsing API strings, checking them against a currency, exact arithmetic.

Python's default decimal context keeps 28 significant digits, fewer than NUMERIC(38,18) holds
(an ETH balance of 10^10 with 18 decimals already has 29). Ledger arithmetic and formatting
therefore run in MONEY_CONTEXT, which is wide enough for every column value and traps any
rounding: a ledger sum is exact or it is an error.
"""
from __future__ import annotations

import re
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded

from wallet_api.errors import field_error
from wallet_api.wallets import currencies

# Plain notation only: digits with an optional fractional part; no sign, exponent or spaces.
# ASCII digits: in a str pattern \d also matches e.g. Arabic-Indic digits, which Decimal() accepts.
AMOUNT_PATTERN = re.compile(r"^\d+(\.\d+)?$", re.ASCII)
# 16 integer digits (MAX_AMOUNT has 16) + point + 18 decimals, with room for leading zeros.
MAX_AMOUNT_LENGTH = 64

MONEY_CONTEXT = Context(prec=60, traps=[InvalidOperation, Inexact, Rounded, Overflow])


def parse_amount(value: object) -> Decimal:
    """A positive Decimal from an API amount string; ValueError with a client-facing message."""
    if not isinstance(value, str):
        raise ValueError('Amount must be a decimal string, e.g. "10.50" (JSON numbers are not accepted).')
    if len(value) > MAX_AMOUNT_LENGTH or not AMOUNT_PATTERN.fullmatch(value):
        raise ValueError('Amount must be a plain decimal string such as "10.50": digits with an optional '
                         'fractional part, no sign, exponent or spaces.')
    amount = Decimal(value)
    check_range(amount)
    return amount


def check_range(amount: Decimal) -> None:
    """ValueError unless 0 < amount <= MAX_AMOUNT (and finite)."""
    if not amount.is_finite():
        raise ValueError("Amount must be a finite number.")
    if amount <= 0:
        raise ValueError("Amount must be greater than zero.")
    if amount > currencies.MAX_AMOUNT:
        raise ValueError(f"Amount must be at most {currencies.MAX_AMOUNT:f}.")


def decimal_places(amount: Decimal) -> int:
    """Decimals as written: Decimal('10.500') has 3 (trailing zeros count)."""
    exponent = amount.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def check_amount(amount: Decimal, currency: str, *, field: str = "amount") -> None:
    """Raise a 422 field error unless `amount` is a valid positive amount of `currency`."""
    if not isinstance(amount, Decimal):
        raise field_error(field, "Amount must be a decimal string.")
    try:
        check_range(amount)
    except ValueError as exc:
        raise field_error(field, str(exc)) from None
    places = currencies.precision(currency)
    if decimal_places(amount) > places:
        raise field_error(field, f"{currency} amounts have at most {places} decimal places "
                                 f"(precision {places}).", error="invalid_precision")


def add(a: Decimal, b: Decimal) -> Decimal:
    """a + b exactly (raises instead of rounding)."""
    return MONEY_CONTEXT.add(a, b)


def format_money(amount: Decimal | None, currency: str) -> str | None:
    """Plain decimal string at the currency's precision, exact for every NUMERIC(38,18) value."""
    if amount is None:
        return None
    # format_amount quantizes in its own 60-digit context (padding; a stored value never needs
    # rounding), so no context of this thread is needed or changed: a response formats many amounts.
    return currencies.format_amount(amount, currency)
