"""What makes a secret acceptable, and how old it may get (docs/SECRETS_AND_ACCESS_CONTROL.md).

- Strength, in production: our own secrets (the JWT keys, METRICS_TOKEN) are at least 32
  characters with an estimated 128 bits of entropy; provider secrets (MoonPay's) at least 16
  characters and 64 bits. Elsewhere our own secrets need their 32 characters only.
  A value that is a known placeholder ("change-me", "secret", ...) or one character repeated is
  refused whatever its length. The estimate is the string's own Shannon entropy per character
  times its length: crude, but it stops `aaaa...` and `passwordpassword...`, and a value from
  `secrets.token_urlsafe(48)` passes with room to spare.
- Age: each secret's last rotation is given as `<NAME>_ROTATION_DATE` (YYYY-MM-DD). Older than 60
  days is a warning (rotate soon), older than 90 days is critical: /ready fails and the process
  logs it at start.
"""
from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from dataclasses import dataclass

OWN_MIN_LENGTH, OWN_MIN_BITS = 32, 128
PROVIDER_MIN_LENGTH, PROVIDER_MIN_BITS = 16, 64
WARN_AFTER_DAYS, CRITICAL_AFTER_DAYS = 60, 90
PLACEHOLDERS = ("change-me", "changeme", "replace-me", "replace_me", "placeholder", "secret", "password",
                "example", "xxxxxxxx", "todo")


def estimated_bits(value: str) -> float:
    """Shannon entropy of the value's own characters, times its length."""
    if not value:
        return 0.0
    counts = Counter(value)
    per_char = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return per_char * len(value)


def weakness(value: str, *, own: bool, strict: bool = True) -> str | None:
    """Why `value` is not acceptable as a secret (never quoting it), or None. Not `strict` (outside
    production), only the length of our own secrets is checked: test and demo values stay easy."""
    min_length, min_bits = (OWN_MIN_LENGTH, OWN_MIN_BITS) if own else (PROVIDER_MIN_LENGTH, PROVIDER_MIN_BITS)
    if not strict:
        return f"Must be at least {min_length} characters." if own and len(value) < min_length else None
    if len(value) < min_length:
        return f"Must be at least {min_length} characters."
    lowered = value.lower()
    if any(word in lowered for word in PLACEHOLDERS) and estimated_bits(value) < 2 * min_bits:
        return "Looks like a placeholder; generate a random value."
    if estimated_bits(value) < min_bits:
        return (f"Too predictable (about {estimated_bits(value):.0f} bits; at least {min_bits} needed). Generate "
                "one with: python -c \"import secrets; print(secrets.token_urlsafe(48))\"")
    return None


@dataclass(frozen=True)
class RotationAge:
    name: str
    rotated_on: dt.date | None
    age_days: int | None
    level: str  # ok | warning | critical | unknown


def rotation_ages(dates: dict[str, dt.date | None], *, today: dt.date | None = None) -> list[RotationAge]:
    """The age of each secret's last rotation, graded by the 60/90-day policy."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    ages = []
    for name, rotated_on in sorted(dates.items()):
        if rotated_on is None:
            ages.append(RotationAge(name, None, None, "unknown"))
            continue
        age = (today - rotated_on).days
        level = "critical" if age > CRITICAL_AFTER_DAYS else "warning" if age > WARN_AFTER_DAYS else "ok"
        ages.append(RotationAge(name, rotated_on, age, level))
    return ages
