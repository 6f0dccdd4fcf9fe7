"""CREDIT_SPIKE: unusual on-ramp volume, a fraud signal for a human to look at.

The fiat value of completed purchases (MoonPay's baseCurrencyAmount, else the amount the user
asked for) inside a sliding window (ALERT_CREDIT_SPIKE_WINDOW_MINUTES) is summed per fiat
currency, platform-wide and per user; a sum strictly above ALERT_CREDIT_SPIKE_THRESHOLD (platform)
or ALERT_CREDIT_SPIKE_USER_THRESHOLD (one user) raises an alert. Currencies are not converted:
each threshold applies to each fiat currency on its own. Checked by the wallet reconciliation
job (everyone) and after applied credits: the credited users' windows (an indexed scan of their
completions; a drain checks the users it credited at least every USER_CHECK_EVERY_SECONDS and
when it ends), the platform's at most once per PLATFORM_CHECK_EVERY_SECONDS across every worker.
The platform sum scans every completion of the window, so checking it after each credit would
cost a worker time proportional to the volume it is there to watch, exactly when the volume is
high. Nothing is blocked or reversed.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection
from decimal import Decimal

from flask import current_app
from sqlalchemy import text

from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import AlertSpec, raise_alerts
from wallet_api.db_types import utcnow
from wallet_api.extensions import db
from wallet_api.wallets.amounts import format_money

_PLATFORM = text("""
    SELECT base_currency, sum(coalesce(provider_base_amount, base_amount)) AS total, count(*) AS purchases
    FROM onramp_transactions
    WHERE status = 'completed' AND completed_at > :since AND completed_at <= :until
    GROUP BY base_currency
    HAVING sum(coalesce(provider_base_amount, base_amount)) > :threshold""")

_PER_USER = text("""
    SELECT user_id, base_currency, sum(coalesce(provider_base_amount, base_amount)) AS total,
           count(*) AS purchases
    FROM onramp_transactions
    WHERE status = 'completed' AND completed_at > :since AND completed_at <= :until
      AND (CAST(:user_ids AS uuid[]) IS NULL OR user_id = ANY(CAST(:user_ids AS uuid[])))
    GROUP BY user_id, base_currency
    HAVING sum(coalesce(provider_base_amount, base_amount)) > :threshold""")


PLATFORM_CHECK_EVERY_SECONDS = 10
USER_CHECK_EVERY_SECONDS = 1


def check_credit_spikes(*, user_ids: Collection[uuid.UUID] | None = None, now: dt.datetime | None = None,
                        platform: bool = True) -> int:
    """Raise CREDIT_SPIKE alerts for the window ending now (these users', or everyone's when
    `user_ids` is None, and the platform's unless `platform` is false), in the caller's transaction;
    returns how many spikes were found."""
    specs = find_credit_spikes(user_ids=user_ids, now=now, platform=platform)
    raise_alerts(specs)
    return len(specs)


def find_credit_spikes(*, user_ids: Collection[uuid.UUID] | None = None, now: dt.datetime | None = None,
                       platform: bool = True) -> list[AlertSpec]:
    """The alerts `check_credit_spikes` would raise, read only."""
    settings = current_app.config["SETTINGS"]
    until = now or utcnow()
    window = dt.timedelta(minutes=settings.alert_credit_spike_window_minutes)
    since = until - window
    period = {"start": since, "end": until, "window_minutes": settings.alert_credit_spike_window_minutes}
    specs = []
    for row in db.session.execute(_PLATFORM, {"since": since, "until": until,
                                              "threshold": settings.alert_credit_spike_threshold}) if platform else ():
        specs.append(_spike(scope="platform", subject=f"platform:{row.base_currency}", total=row.total,
                            currency=row.base_currency, purchases=row.purchases,
                            threshold=settings.alert_credit_spike_threshold, period=period))
    users = None if user_ids is None else sorted(user_ids)
    for row in db.session.execute(_PER_USER, {"since": since, "until": until, "user_ids": users,
                                              "threshold": settings.alert_credit_spike_user_threshold}):
        specs.append(_spike(scope="user", subject=f"user:{row.user_id}:{row.base_currency}", total=row.total,
                            currency=row.base_currency, purchases=row.purchases, user_id=row.user_id,
                            threshold=settings.alert_credit_spike_user_threshold, period=period))
    return specs


def _spike(*, scope: str, subject: str, total: Decimal, currency: str, purchases: int, threshold: Decimal,
           period: dict, user_id: uuid.UUID | None = None) -> AlertSpec:
    who = "platform-wide" if scope == "platform" else f"by user {user_id}"
    minutes = period["window_minutes"]
    shown = format_money(total, currency)
    return AlertSpec(
        alert_type=AlertType.CREDIT_SPIKE, subject=subject,
        title=f"Credit spike {who}: {shown} {currency} in {minutes} min",
        message=f"{purchases} completed purchase(s) {who} worth {shown} {currency} within the last "
                f"{minutes} minutes, above the threshold of {threshold:f} {currency}.",
        metadata={"scope": scope, "user_id": user_id, "base_currency": currency, "amount": total,
                  "threshold": threshold, "purchases": purchases, "period": period})
