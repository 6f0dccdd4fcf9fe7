"""Signed MoonPay buy-widget URLs.

MoonPay recomputes ``base64(HMAC-SHA256(secret_key, url.search))`` over the search string as it
arrives, leading ``?`` included and the trailing ``&signature=`` excluded, so the bytes we sign
must be exactly the bytes we emit. Signing is mandatory once the URL carries a wallet address
or e-mail, and a bad signature stops the widget from loading.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from urllib.parse import quote, unquote

__all__ = ["build_widget_url", "verify_widget_url"]

_SIGNATURE_PARAM = "&signature="
# Keys are emitted unencoded, so they must not need encoding; MoonPay's are all camelCase.
_PARAM_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_RESERVED_PARAMS = frozenset({"apiKey", "signature"})


def _sign(search: str, secret_key: str) -> str:
    """Return base64(HMAC-SHA256(secret_key, search)) as text."""
    digest = hmac.new(secret_key.encode("utf-8"), search.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def build_widget_url(
    *,
    base_url: str,
    publishable_key: str,
    secret_key: str,
    params: dict[str, str],
) -> str:
    """Return the buy-widget URL for ``params``, signed with the MoonPay secret key."""
    if not secret_key:
        raise ValueError("secret_key must not be empty")
    if not publishable_key:
        raise ValueError("publishable_key must not be empty")
    if "?" in base_url or "#" in base_url:
        # Any existing query would have to be part of the signed string; refuse rather than
        # produce a URL whose signature MoonPay rejects.
        raise ValueError("base_url must not contain a query string or fragment")
    for name, value in params.items():
        if not isinstance(name, str) or not _PARAM_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid widget parameter name {name!r}")
        if name in _RESERVED_PARAMS:
            raise ValueError(f"widget parameter {name!r} is set by build_widget_url")
        if not isinstance(value, str):
            raise TypeError(f"widget parameter {name!r} must be a str, got {type(value).__name__}")

    # Sorted keys: the same session always yields the same URL, whatever the caller's dict order.
    pairs = [("apiKey", publishable_key), *sorted(params.items())]
    search = "?" + "&".join(f"{name}={quote(value, safe='')}" for name, value in pairs)
    signature = _sign(search, secret_key)
    # base64 contains '+', '/' and '='; unencoded, a '+' would arrive as a space.
    return f"{base_url}{search}{_SIGNATURE_PARAM}{quote(signature, safe='')}"


def verify_widget_url(url: str, secret_key: str) -> bool:
    """Return True when ``url`` ends with a valid ``&signature=`` over everything before it."""
    _, question, rest = url.partition("?")
    if not question or not secret_key:
        return False
    search = "?" + rest.split("#", 1)[0]
    cut = search.rfind(_SIGNATURE_PARAM)
    if cut == -1:
        return False
    encoded = search[cut + len(_SIGNATURE_PARAM) :]
    if "&" in encoded:
        # MoonPay requires the signature to be the last parameter.
        return False
    expected = _sign(search[:cut], secret_key)
    return hmac.compare_digest(unquote(encoded).encode("utf-8"), expected.encode("ascii"))
