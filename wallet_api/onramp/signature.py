"""MoonPay webhook signatures (`Moonpay-Signature-V2: t=<unix seconds>,s=<hex>`).

The signed message is ``f"{t}."`` followed by the raw request body bytes, keyed with the
webhook API key (not the ``sk_`` secret key). Verification must see the body exactly as it
arrived: any JSON round trip changes the bytes and breaks the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = [
    "MAX_HEADER_LENGTH",
    "SignatureError",
    "sign_webhook",
    "verify_webhook_signature",
]

# A real header is ~80 characters; anything far bigger is garbage or an attempt to make us
# burn CPU on thousands of candidate signatures.
MAX_HEADER_LENGTH = 1024

# ASCII digits only: str.isdigit() and int() also accept other scripts' digits ("١٢٣").
# Ten digits cover unix time until the year 2286.
_TIMESTAMP_RE = re.compile(r"[0-9]{1,10}")
_SHA256_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")


class SignatureError(ValueError):
    """A webhook signature was missing, malformed, stale or wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        # Short and machine-readable so the route can log and count it without parsing text.
        self.reason = reason


def _hex_digest(*, body: bytes, secret: str, timestamp: int) -> str:
    """Return the lowercase hex HMAC-SHA256 of ``"{timestamp}." + body``."""
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)
    mac.update(f"{timestamp}.".encode("ascii"))
    mac.update(body)
    return mac.hexdigest()


def _parse_header(header: str) -> tuple[int, list[str]]:
    """Split a signature header into its timestamp and its well-formed candidate signatures."""
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            continue
        key = key.strip()
        value = value.strip()
        if key == "t":
            timestamps.append(value)
        elif key == "s":
            signatures.append(value)
        # Other keys (a future "v2=" scheme, say) are ignored on purpose, as Stripe does.

    # Two timestamps are ambiguous: which one did the signer mean? Refuse rather than guess.
    if len(timestamps) != 1 or not _TIMESTAMP_RE.fullmatch(timestamps[0]):
        raise SignatureError("malformed_header")
    # Several s= values are allowed (secret rotation); ones that cannot be a SHA-256 hex digest
    # can never match, and filtering them keeps compare_digest on plain ASCII.
    candidates = [s.lower() for s in signatures if _SHA256_HEX_RE.fullmatch(s)]
    if not candidates:
        raise SignatureError("malformed_header")
    return int(timestamps[0]), candidates


def verify_webhook_signature(
    *,
    header: str | None,
    body: bytes,
    secret: str,
    tolerance_seconds: int,
    now: float,
) -> int:
    """Verify a ``Moonpay-Signature-V2`` header against the raw body; return its timestamp."""
    if not secret:
        # Misconfiguration, not a bad request: an empty key would make forgery trivial.
        raise ValueError("webhook secret must not be empty")
    if tolerance_seconds < 0:
        raise ValueError("tolerance_seconds must not be negative")
    if header is None or not header.strip():
        raise SignatureError("missing_header")
    if len(header) > MAX_HEADER_LENGTH:
        raise SignatureError("malformed_header")

    timestamp, candidates = _parse_header(header)
    expected = _hex_digest(body=body, secret=secret, timestamp=timestamp)
    # No early exit: check every candidate so timing does not reveal which one was close.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("signature_mismatch")
    # Checked after the MAC so a forger learns nothing about the window, and an operator sees
    # "timestamp" only for genuine but late (replayed or clock-skewed) deliveries.
    if abs(now - timestamp) > tolerance_seconds:
        raise SignatureError("timestamp_out_of_tolerance")
    return timestamp


def sign_webhook(*, body: bytes, secret: str, timestamp: int) -> str:
    """Return a ``Moonpay-Signature-V2`` header value for ``body`` signed at ``timestamp``."""
    if not secret:
        raise ValueError("webhook secret must not be empty")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("timestamp must be a non-negative int")
    return f"t={timestamp},s={_hex_digest(body=body, secret=secret, timestamp=timestamp)}"
