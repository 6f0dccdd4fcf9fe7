"""Posting alerts to ALERT_WEBHOOK_URL (Slack-compatible incoming webhook JSON: `{"text": ...}`).

Runs in a worker, never in the code that raised the alert: a slow or failing notifier must not
fail a credit or a reconciliation. Posted alerts get `notified_at`; a failed post raises so RQ
retries the job, and the periodic alert-notifications job sweeps what is still unposted.
"""
from __future__ import annotations

import datetime as dt
import uuid

import httpx
import structlog
from flask import current_app
from sqlalchemy import select, update

from wallet_api.alerts.models import NOTIFIED_SEVERITIES, AlertLog
from wallet_api.db_types import utcnow
from wallet_api.extensions import db

log = structlog.get_logger(__name__)

MAX_LINES = 20          # more alerts than this in one post are summarised as "and N more"
MAX_ATTEMPTS = 10       # the sweep gives up on an alert after this many failed posts
SWEEP_GRACE = dt.timedelta(minutes=1)  # leave fresh alerts to the job queued when they were raised
TIMEOUT_SECONDS = 5.0


class NotifyError(RuntimeError):
    """The alert webhook refused or could not be reached; the job fails and is retried."""


def post_alerts(*, alert_ids: list[uuid.UUID], transport: httpx.BaseTransport | None = None) -> int:
    """Post the given alerts that are still open and unposted; returns how many were posted."""
    alerts = db.session.scalars(
        select(AlertLog).where(AlertLog.id.in_(alert_ids), AlertLog.notified_at.is_(None),
                               AlertLog.resolved.is_(False)).order_by(AlertLog.created_at)).all()
    return _post(alerts, transport=transport)


def sweep_unnotified(*, now: dt.datetime | None = None, transport: httpx.BaseTransport | None = None) -> dict:
    """The alert-notifications job: post critical/high alerts whose notification never went out."""
    now = now or utcnow()
    alerts = db.session.scalars(
        select(AlertLog).where(AlertLog.notified_at.is_(None), AlertLog.resolved.is_(False),
                               AlertLog.severity.in_([s.value for s in NOTIFIED_SEVERITIES]),
                               AlertLog.created_at < now - SWEEP_GRACE,
                               AlertLog.notify_attempts < MAX_ATTEMPTS)
        .order_by(AlertLog.created_at).limit(MAX_LINES * 5)).all()
    return {"posted": _post(alerts, transport=transport)}


def _post(alerts: list[AlertLog], *, transport: httpx.BaseTransport | None) -> int:
    url = current_app.config["SETTINGS"].alert_webhook_url
    if not alerts or not url:
        db.session.rollback()
        return 0
    ids = [alert.id for alert in alerts]
    try:
        with httpx.Client(timeout=TIMEOUT_SECONDS, transport=transport, follow_redirects=False) as client:
            response = client.post(url, json=slack_message(alerts))
        if not 200 <= response.status_code < 300:
            raise NotifyError(f"alert webhook answered HTTP {response.status_code}")
    except (httpx.HTTPError, NotifyError) as exc:
        db.session.rollback()
        db.session.execute(update(AlertLog).where(AlertLog.id.in_(ids))
                           .values(notify_attempts=AlertLog.notify_attempts + 1))
        db.session.commit()
        # The URL itself is a secret (it carries the webhook's token): never log it.
        log.warning("alert_notification_failed", alerts=len(ids), error=type(exc).__name__)
        raise NotifyError(f"posting {len(ids)} alert(s) failed: {type(exc).__name__}") from None
    db.session.execute(update(AlertLog).where(AlertLog.id.in_(ids)).values(notified_at=utcnow()))
    db.session.commit()
    log.info("alerts_notified", alerts=len(ids))
    return len(ids)


def slack_message(alerts: list[AlertLog]) -> dict:
    """One message for a batch of alerts, most severe first."""
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    ranked = sorted(alerts, key=lambda a: (order.get(a.severity, 9), a.created_at))
    lines = [f"*[{a.severity.upper()}] {a.alert_type}*: {a.title} (alert {a.id})" for a in ranked[:MAX_LINES]]
    if len(ranked) > MAX_LINES:
        lines.append(f"... and {len(ranked) - MAX_LINES} more: GET /admin/alerts/unresolved")
    header = f"{len(ranked)} new alert(s) on the wallet platform"
    return {"text": "\n".join([header, *lines])}
