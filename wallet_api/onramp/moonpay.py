"""MoonPay's vocabulary, in one place: event types, transaction statuses, currency codes, and the
transaction record every MoonPay payload (webhook `data` or REST answer) is parsed into.

Every body is decoded with ``parse_float=Decimal`` (`load_payload`): MoonPay sends amounts as JSON
numbers, and none may pass through a binary float.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from wallet_api.onramp.models import OnrampStatus
from wallet_api.request_parsing import unstorable_text

PROVIDER = "moonpay"
# Buy-widget webhook events (sell and identity-check events are not ours).
EVENT_TYPES = ("transaction_created", "transaction_updated", "transaction_failed")
# MoonPay's buy-transaction statuses and the local status each one means.
STATUS = {
    "waitingPayment": OnrampStatus.WAITING_PAYMENT,
    "pending": OnrampStatus.PENDING,
    "waitingAuthorization": OnrampStatus.WAITING_AUTHORIZATION,
    "completed": OnrampStatus.COMPLETED,
    "failed": OnrampStatus.FAILED,
}
COMPLETED = "completed"
# Our crypto currencies and MoonPay's code for each (USDC is the Ethereum ERC-20 token).
CURRENCY_CODES: dict[str, str] = {"BTC": "btc", "ETH": "eth", "SOL": "sol", "USDC": "usdc"}
# The fiat currencies a purchase may be paid in.
BASE_CURRENCIES = ("USD", "EUR", "GBP")
_CURRENCY_BY_CODE = {code: currency for currency, code in CURRENCY_CODES.items()}

_MAX_ID_LENGTH = 255
# Plain decimal notation only: Decimal() alone would also take "NaN", "Infinity", " 1 " and "1_0".
_NUMERIC_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# Bounds the exponent so later quantize() calls cannot blow up on "1e999999"; 10**40 of
# anything is not a real amount and 10**-40 is below every currency's precision.
_MAX_ABS_EXPONENT = 40


def currency_for_code(code: str) -> str | None:
    """Our currency for a MoonPay `currency.code` (None when we do not support it)."""
    return _CURRENCY_BY_CODE.get(code.strip().lower())


def _reject_constant(name: str) -> NoReturn:
    """Refuse NaN and Infinity, which json.loads would otherwise accept."""
    raise ValueError(f"non-finite JSON number {name}")


def load_payload(raw: str | bytes) -> Any:
    """Decode a MoonPay body with exact decimals: no amount ever passes through a binary float."""
    return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)


# --------------------------------------------------------------------------- payload parsing


def _optional_str(name: str, value: Any, *, max_length: int | None = None) -> str | None:
    """Return a string field, None when absent or empty; ValueError naming it otherwise."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {type(value).__name__}")
    if unstorable_text(value):
        raise ValueError(f"{name}: contains a NUL character or an unpaired UTF-16 surrogate")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{name}: longer than {max_length} characters")
    return value or None


def _required_str(name: str, value: Any, *, max_length: int | None = None) -> str:
    """Return a non-empty string field; ValueError naming it otherwise."""
    text = _optional_str(name, value, max_length=max_length)
    if text is None or not text.strip():
        raise ValueError(f"{name}: required non-empty string")
    return text


def _amount(name: str, value: Any) -> Decimal | None:
    """Return an amount as an exact, finite, non-negative Decimal (None when absent)."""
    if value is None:
        return None
    # bool is an int subclass: True must not become an amount of 1.
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got bool")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        # Only reachable when someone parsed without parse_float=Decimal; str() gives the
        # shortest repr ("0.1"), not the binary expansion Decimal(0.1) would.
        if not math.isfinite(value):
            raise ValueError(f"{name}: not a finite number")
        amount = Decimal(str(value))
    elif isinstance(value, str):
        if not _NUMERIC_RE.fullmatch(value):
            raise ValueError(f"{name}: not a decimal number")
        try:
            amount = Decimal(value)
        except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
            raise ValueError(f"{name}: not a decimal number") from None
    else:
        raise ValueError(f"{name}: expected a number, got {type(value).__name__}")

    if not amount.is_finite():
        raise ValueError(f"{name}: not a finite number")
    if amount < 0:
        raise ValueError(f"{name}: must not be negative")
    if not amount.is_zero() and abs(amount.adjusted()) > _MAX_ABS_EXPONENT:
        raise ValueError(f"{name}: out of range")
    return amount


def _currency_code(name: str, value: Any) -> str | None:
    """Return the lowercase ``code`` of a nested currency object (None when absent)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: expected an object, got {type(value).__name__}")
    code = _optional_str(f"{name}.code", value.get("code"), max_length=32)
    return code.strip().lower() if code else None


@dataclass(frozen=True, slots=True)
class MoonPayTransaction:
    """One MoonPay buy transaction, with exact amounts and the payload it came from."""

    id: str
    status: str
    external_transaction_id: str | None
    external_customer_id: str | None
    base_currency_amount: Decimal | None
    quote_currency_amount: Decimal | None
    currency_code: str | None
    base_currency_code: str | None
    crypto_transaction_id: str | None
    failure_reason: str | None
    created_at: str | None
    updated_at: str | None
    # Kept for audit and for fields we do not model; excluded from eq/hash because a dict is
    # unhashable and two parses of the same transaction should compare equal.
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> MoonPayTransaction:
        """Parse a MoonPay transaction object; ValueError naming the first bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"data: expected an object, got {type(data).__name__}")
        return cls(
            id=_required_str("id", data.get("id"), max_length=_MAX_ID_LENGTH),
            status=_required_str("status", data.get("status"), max_length=64),
            external_transaction_id=_optional_str(
                "externalTransactionId",
                data.get("externalTransactionId"),
                max_length=_MAX_ID_LENGTH,
            ),
            external_customer_id=_optional_str(
                "externalCustomerId",
                data.get("externalCustomerId"),
                max_length=_MAX_ID_LENGTH,
            ),
            base_currency_amount=_amount("baseCurrencyAmount", data.get("baseCurrencyAmount")),
            quote_currency_amount=_amount("quoteCurrencyAmount", data.get("quoteCurrencyAmount")),
            currency_code=_currency_code("currency", data.get("currency")),
            base_currency_code=_currency_code("baseCurrency", data.get("baseCurrency")),
            crypto_transaction_id=_optional_str(
                "cryptoTransactionId", data.get("cryptoTransactionId"), max_length=512
            ),
            failure_reason=_optional_str("failureReason", data.get("failureReason")),
            created_at=_optional_str("createdAt", data.get("createdAt"), max_length=64),
            updated_at=_optional_str("updatedAt", data.get("updatedAt"), max_length=64),
            raw=dict(data),
        )
