"""The last processor before a log line is rendered: no secret and no card number leaves the process.

Two rules, applied at any depth of dicts, lists and tuples:
- a value under a secret-looking key (password, token, secret, api key, signature, Authorization,
  cookie, credential, card number, CVV), or paired with one (`("Authorization", "...")`, as
  header lists are), is replaced whole;
- inside every string: `key=value` / `key: value` / `"key": "value"` pairs with such a key,
  `Bearer ...` credentials, JWTs (`eyJ...`), provider secret keys (`sk_live_...`, `wk_test_...`),
  the password of a URL (`scheme://user:password@host`) are replaced, and digit runs that look like
  a payment card number (13 to 19 digits, optional spaces or dashes, starting 2-6, passing Luhn) are
  masked to their last four digits.

Cost, per string value: a few substring tests on its lower-case copy, then a precompiled regex pass
only when one of them hits (or a digit run could be a card); per key, one cached lookup. Fields the
logging chain or this code's own context binding writes (timestamp, level, logger, the context ids)
are skipped. `bench/log_sanitiser.py` measures it per line (docs/LOGGING.md has the numbers).
"""
from __future__ import annotations

import functools
import re

REDACTED = "[redacted]"

_SECRET_WORDS = (r"pass(?:word|wd|phrase)?|secret|token|authori[sz]ation|api[_-]?key|signature|cookie"
                 r"|credential|private[_-]?key")
_SECRET_KEY = re.compile(rf"{_SECRET_WORDS}|cvv|cvc|card[_-]?number|^pan$", re.IGNORECASE)

# One alternation, one pass: each branch names what it found. A key's prefix ("refresh_" of
# "refresh_token=") stays outside the match: starting at the secret word keeps the regex linear.
_SENSITIVE = re.compile(rf"""
    (?P<assign>(?:{_SECRET_WORDS})[\w-]*["']?\s*[=:]\s*)
        (?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|(?:(?:bearer|basic|digest)\s+)?[^\s"';&}}\]]+)
  | (?P<bearer>\bbearer\s+)[\w.~+/=-]+
  | (?P<jwt>\beyJ[\w-]+\.[\w-]+\.[\w-]*)
  | (?P<provider_key>\b(?:sk|wk|rk)_(?:live|test)_\w+)
  | (?P<userinfo>://[^/\s:@]+:)[^/\s@]+@
  | (?P<card>(?<![\w.])[2-6](?:[ -]?\d){{12,18}}(?!\.?\d))
""", re.IGNORECASE | re.VERBOSE)
_CARD = re.compile(r"(?<![\w.])[2-6](?:[ -]?\d){12,18}(?!\.?\d)")
_CARD_HINT = re.compile(r"[2-6][\d -]{11}")  # a cheaper scan that every card number passes
_NOT_DIGITS = re.compile(r"\D")
# Every branch of _SENSITIVE but the card's starts with one of these (lower case). Most strings hold
# none, and a few substring tests cost far less than a case-insensitive regex pass.
_TRIGGERS = ("pass", "secret", "token", "authori", "apikey", "api_key", "api-key", "signature", "cookie",
             "credential", "private", "bearer", "eyj", "_live_", "_test_", "://")
_SHORTEST_MATCH = 6  # "pass=x"

# Written by the processors before this one, or ids this code binds itself (UUIDs from a verified
# token, a route converter or a database row; an RQ job id; a module path), never outside text.
_TRUSTED_FIELDS = frozenset({"timestamp", "level", "logger", "method", "user_id", "wallet_id", "to_wallet_id",
                             "provider_event_id", "job_id", "job_name", "parent_job_id"})


def sanitise_event(_logger, _name, event_dict: dict) -> dict:
    """structlog processor: the event with every secret redacted and card numbers masked."""
    return {key: (value if key in _TRUSTED_FIELDS else _clean(key, value)) for key, value in event_dict.items()}


def sanitise(value):
    """`value` (any structure of dicts, lists, tuples and strings) with its secrets redacted."""
    return _clean_value(value)


def sanitise_text(text: str) -> str:
    """`text` with secret-looking assignments, tokens and card numbers redacted or masked."""
    if len(text) < _SHORTEST_MATCH:
        return text
    lowered = text.lower()
    for trigger in _TRIGGERS:
        if trigger in lowered:
            return _SENSITIVE.sub(_replace, text)
    return _CARD.sub(_mask_card, text) if _CARD_HINT.search(text) else text


@functools.lru_cache(maxsize=4096)
def looks_secret(key: str) -> bool:
    """True for a field name whose value must never be logged or stored (passwords, tokens, ...)."""
    # Events reuse a small set of keys: the regex runs once per key and process, not per line.
    return _SECRET_KEY.search(key) is not None


def _clean(key, value):
    if value is not None and isinstance(key, str) and looks_secret(key):
        return REDACTED
    return _clean_value(value)


def _clean_value(value):
    if isinstance(value, str):
        return sanitise_text(value)
    if isinstance(value, dict):
        return {k: _clean(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        if len(value) == 2 and isinstance(value, (list, tuple)) and isinstance(value[0], str) \
                and looks_secret(value[0]):
            return [value[0], REDACTED]  # a (name, value) pair, as headers often are
        return [_clean_value(v) for v in value]
    if isinstance(value, BaseException):  # rendered with repr(): its message may quote a secret
        return sanitise_text(repr(value))
    return value


def _replace(match: re.Match) -> str:
    if match.group("value") is not None:
        return match.group("assign") + REDACTED
    if match.group("bearer") is not None:
        return match.group("bearer") + REDACTED
    if match.group("userinfo") is not None:
        return match.group("userinfo") + REDACTED + "@"
    if match.group("card") is not None:
        return _mask_card(match)
    return REDACTED


def _mask_card(match: re.Match) -> str:
    card = match.group(0)
    digits = _NOT_DIGITS.sub("", card)
    return f"[card ****{digits[-4:]}]" if _luhn_valid(digits) else card


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0
