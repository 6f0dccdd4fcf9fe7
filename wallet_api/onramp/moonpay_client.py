"""A small MoonPay REST client (provider reconciliation), returning `moonpay.MoonPayTransaction`s.

Bodies are decoded with exact decimals (`moonpay.load_payload`); a malformed answer is an error,
never a silently shortened list.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx

from wallet_api.config import Settings
from wallet_api.onramp.moonpay import MoonPayTransaction, load_payload

__all__ = ["MoonPayApi", "MoonPayApiError", "MoonPayClient", "MoonPayTransaction", "moonpay_api"]

# Error bodies are quoted in exception messages for operators; keep them short.
_MAX_ERROR_SNIPPET = 200
# Distinct from a JSON null body, which is a broken answer rather than "not found".
_NOT_FOUND: Any = object()

# --------------------------------------------------------------------------- the client


class MoonPayApiError(Exception):
    """MoonPay could not be reached or answered with an error."""

    def __init__(self, status: int | None, message: str) -> None:
        shown = "no response" if status is None else status
        super().__init__(f"MoonPay API error ({shown}): {message}")
        # None when no HTTP response arrived (connection error, timeout).
        self.status = status
        self.message = message


@runtime_checkable
class MoonPayApi(Protocol):
    """What the provider reconciliation job needs from MoonPay."""

    def get_transaction(self, transaction_id: str) -> MoonPayTransaction | None:
        """Return one buy transaction by MoonPay id, or None when MoonPay does not know it."""
        ...

    def find_by_external_id(self, external_transaction_id: str) -> list[MoonPayTransaction]:
        """Return the buy transactions carrying our external transaction id."""
        ...

    def list_transactions(
        self, *, start: datetime, end: datetime, limit: int = 50
    ) -> list[MoonPayTransaction]:
        """Return the buy transactions created in ``[start, end)``."""
        ...


def _path_segment(name: str, value: str) -> str:
    """Percent-encode one path segment, refusing values that would change the path."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    # httpx resolves dot segments, so ".." would silently query the parent resource.
    if value in {".", ".."}:
        raise ValueError(f"{name} must not be a dot segment")
    return quote(value, safe="")


class MoonPayClient:
    """Synchronous MoonPay REST client with bounded retries on transient failures."""

    def __init__(
        self,
        base_url: str,
        secret_key: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff_seconds: float = 0.2,
        max_backoff_seconds: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not secret_key:
            raise ValueError("secret_key must not be empty")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must not be negative")
        if backoff_seconds < 0 or max_backoff_seconds < 0:
            raise ValueError("backoff must not be negative")
        self._secret_key = secret_key
        self._retries = retries
        self._backoff_seconds = backoff_seconds
        self._max_backoff_seconds = max_backoff_seconds
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Api-Key {secret_key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout),
            transport=transport,
            # A redirect would be an unexpected answer from MoonPay; surface it, do not chase it.
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"MoonPayClient(base_url={str(self._client.base_url)!r})"

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._client.close()

    def __enter__(self) -> MoonPayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ public API

    def get_transaction(self, transaction_id: str) -> MoonPayTransaction | None:
        """Return one buy transaction by MoonPay id (GET /v1/transactions/{id}); None on 404."""
        path = f"/v1/transactions/{_path_segment('transaction_id', transaction_id)}"
        payload = self._get_json(path, not_found_ok=True)
        if payload is _NOT_FOUND:
            return None
        if not isinstance(payload, dict):
            raise MoonPayApiError(200, f"GET {path}: expected an object")
        transaction = self._parse(path, payload)
        if transaction.id != transaction_id:
            raise MoonPayApiError(200, f"GET {path}: response is for a different transaction")
        return transaction

    def find_by_external_id(self, external_transaction_id: str) -> list[MoonPayTransaction]:
        """Return every buy transaction carrying our external id (MoonPay allows duplicates)."""
        segment = _path_segment("external_transaction_id", external_transaction_id)
        path = f"/v1/transactions/ext/{segment}"
        payload = self._get_json(path, not_found_ok=True)
        if payload is _NOT_FOUND:
            return []
        if not isinstance(payload, list):
            raise MoonPayApiError(200, f"GET {path}: expected an array")
        return [self._parse(path, item) for item in payload]

    def list_transactions(
        self,
        *,
        start: datetime,
        end: datetime,
        limit: int = 50,
        max_pages: int = 100,
    ) -> list[MoonPayTransaction]:
        """Return the buy transactions created in ``[start, end)``, following offset pages."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")
        if start >= end:
            raise ValueError("start must be before end")
        if limit < 1 or max_pages < 1:
            raise ValueError("limit and max_pages must be positive")
        start_utc = start.astimezone(timezone.utc)
        end_utc = end.astimezone(timezone.utc)
        # MoonPay filters by calendar date, and whether endDate includes its own day is not
        # documented: ask for one day more and trim locally, so nothing in the window is missed.
        base_params = {
            "startDate": start_utc.date().isoformat(),
            "endDate": (end_utc.date() + timedelta(days=1)).isoformat(),
            "limit": str(limit),
        }

        found: dict[str, MoonPayTransaction] = {}
        offset = 0
        for _ in range(max_pages):
            path = "/v1/transactions"
            payload = self._get_json(path, params={**base_params, "offset": str(offset)})
            if not isinstance(payload, list):
                raise MoonPayApiError(200, f"GET {path}: expected an array")
            before = len(found)
            for item in payload:
                transaction = self._parse(path, item)
                # New transactions shift offset pages, so the same one can appear twice.
                found.setdefault(transaction.id, transaction)
            if len(payload) < limit:
                return [t for t in found.values() if _created_within(t, start_utc, end_utc)]
            if len(found) == before:
                # A full page of nothing new: the server is ignoring offset. Stop loudly
                # rather than loop or return a silently truncated list.
                raise MoonPayApiError(200, f"GET {path}: pagination is not advancing")
            offset += len(payload)
        raise MoonPayApiError(None, f"GET /v1/transactions: more than {max_pages} pages")

    # ------------------------------------------------------------------ plumbing

    def _parse(self, path: str, item: Any) -> MoonPayTransaction:
        """Parse one transaction object, turning a bad payload into an API error."""
        try:
            return MoonPayTransaction.from_payload(item)
        except ValueError as exc:
            raise MoonPayApiError(200, f"GET {path}: invalid transaction: {exc}") from None

    def _get_json(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        not_found_ok: bool = False,
    ) -> Any:
        """GET ``path`` with retries and decode its JSON body; _NOT_FOUND for an allowed 404."""
        attempt = 0
        while True:
            delay: float
            try:
                response = self._client.get(path, params=params)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if attempt >= self._retries:
                    raise MoonPayApiError(
                        None, f"GET {path}: {type(exc).__name__} after {attempt + 1} attempt(s)"
                    ) from exc
                delay = self._backoff(attempt)
            except httpx.HTTPError as exc:
                # Anything else (invalid URL, unsupported protocol) will not fix itself.
                raise MoonPayApiError(None, f"GET {path}: {type(exc).__name__}") from exc
            else:
                status = response.status_code
                if status == 404 and not_found_ok:
                    return _NOT_FOUND
                if 200 <= status < 300:
                    return self._decode(path, response)
                if status != 429 and status < 500:
                    # Other 4xx mean our request is wrong (or our key is): retrying cannot help.
                    raise MoonPayApiError(status, f"GET {path}: {self._describe(response)}")
                if attempt >= self._retries:
                    raise MoonPayApiError(
                        status,
                        f"GET {path}: {self._describe(response)} after {attempt + 1} attempt(s)",
                    )
                retry_after = _retry_after_seconds(response)
                delay = (
                    min(retry_after, self._max_backoff_seconds)
                    if retry_after is not None
                    else self._backoff(attempt)
                )
            self._sleep(delay)
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff for the given zero-based retry, capped."""
        return min(self._backoff_seconds * (2**attempt), self._max_backoff_seconds)

    def _decode(self, path: str, response: httpx.Response) -> Any:
        """Decode a JSON body with exact decimals."""
        try:
            return load_payload(response.text)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise MoonPayApiError(response.status_code, f"GET {path}: invalid JSON body") from None

    def _describe(self, response: httpx.Response) -> str:
        """Summarise an error response for a log line, never echoing our key."""
        detail = ""
        try:
            body = json.loads(response.text, parse_float=Decimal)
        except (ValueError, RecursionError):
            body = response.text
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            detail = body["message"]
        elif isinstance(body, str):
            detail = body
        # Redact before truncating, so a key cut in half by the limit cannot survive. A
        # misbehaving proxy or stub could echo our request headers back at us.
        detail = " ".join(detail.replace(self._secret_key, "[redacted]").split())
        detail = detail[:_MAX_ERROR_SNIPPET]
        reason = f"HTTP {response.status_code}"
        return f"{reason}: {detail}" if detail else reason


def _retry_after_seconds(response: httpx.Response) -> float | None:
    """Return Retry-After as seconds when it is given in seconds (HTTP dates are ignored)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _created_within(transaction: MoonPayTransaction, start: datetime, end: datetime) -> bool:
    """True when createdAt falls in ``[start, end)``; an unreadable createdAt is kept."""
    if transaction.created_at is None:
        return True
    try:
        created = datetime.fromisoformat(transaction.created_at)
    except ValueError:
        return True
    if created.tzinfo is None:
        # MoonPay timestamps are UTC ("...Z"); a bare one is read the same way.
        created = created.replace(tzinfo=timezone.utc)
    return start <= created < end


def moonpay_api(settings: Settings) -> MoonPayApi:
    """A MoonPay client for MOONPAY_API_BASE_URL, authenticated with MOONPAY_SECRET_KEY."""
    return MoonPayClient(settings.moonpay_api_base_url, settings.moonpay_secret_key)
