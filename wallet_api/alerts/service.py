"""Raising alerts (in the caller's transaction, deduplicated per subject) and answering them."""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import structlog
from flask import current_app
from rq import Retry
from sqlalchemy import select, text

from wallet_api.alerts.models import NOTIFIED_SEVERITIES, AlertLog, AlertType, Severity
from wallet_api.db_types import metadata_json, utcnow
from wallet_api.errors import Conflict, NotFound, field_error
from wallet_api.extensions import db
from wallet_api.pagination import Page, keyset_page
from wallet_api.queues import DEFAULT, enqueue_after_commit

log = structlog.get_logger(__name__)

NOTIFY_JOB = "worker.jobs.notify_alerts"
# A failing notifier is retried by RQ, then by the periodic alert-notifications sweep.
NOTIFY_RETRY = Retry(max=4, interval=[10, 60, 300, 900])


@dataclass(frozen=True)
class AlertSpec:
    """One alert to raise; `subject` names what it is about (e.g. `wallet:<id>`), one open alert each."""

    alert_type: AlertType
    subject: str
    title: str
    message: str
    metadata: dict


@dataclass(frozen=True)
class Raised:
    new: list[uuid.UUID]       # alerts created by this call
    repeated: list[uuid.UUID]  # open alerts this call found again (occurrences bumped)


# One statement for any number of alerts. ON CONFLICT on the partial unique index of open alerts:
# a repeat bumps the counter and refreshes the details. `xmax = 0` only on a freshly inserted row.
_UPSERT = text("""
    INSERT INTO alert_log (id, alert_type, severity, subject, title, message, metadata)
    SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:severities AS text[]),
                         CAST(:subjects AS text[]), CAST(:titles AS text[]), CAST(:messages AS text[]),
                         CAST(:metadata AS jsonb[]))
    ON CONFLICT (alert_type, subject) WHERE NOT resolved DO UPDATE
        SET occurrences = alert_log.occurrences + 1, last_seen_at = now(), title = EXCLUDED.title,
            message = EXCLUDED.message, metadata = EXCLUDED.metadata
    RETURNING id, (xmax = 0) AS inserted, severity""")


def raise_alerts(specs: list[AlertSpec]) -> Raised:
    """Raise each alert in the caller's transaction (the caller commits); repeats of open ones are counted.

    New critical and high alerts are posted to ALERT_WEBHOOK_URL by a job queued after the commit.
    """
    latest = {(spec.alert_type, spec.subject): spec for spec in specs}  # one row per subject per statement
    if not latest:
        return Raised(new=[], repeated=[])
    ordered = list(latest.values())
    rows = db.session.execute(_UPSERT, {
        "ids": [uuid.uuid4() for _ in ordered],
        "types": [AlertType(spec.alert_type).value for spec in ordered],
        "severities": [AlertType(spec.alert_type).severity.value for spec in ordered],
        "subjects": [spec.subject[:255] for spec in ordered],
        "titles": [spec.title[:255] for spec in ordered],
        "messages": [spec.message for spec in ordered],
        "metadata": [metadata_json(spec.metadata) for spec in ordered],
    }).all()
    raised = Raised(new=[row.id for row in rows if row.inserted], repeated=[row.id for row in rows if not row.inserted])
    for spec in ordered:
        log.warning("alert_raised", alert_type=AlertType(spec.alert_type).value, subject=spec.subject,
                    title=spec.title)
    to_notify = [row.id for row in rows if row.inserted and Severity(row.severity) in NOTIFIED_SEVERITIES]
    if to_notify and current_app.config["SETTINGS"].alert_webhook_url:
        enqueue_after_commit(DEFAULT, NOTIFY_JOB, [str(alert_id) for alert_id in to_notify],
                             retry=NOTIFY_RETRY, job_timeout=60, result_ttl=0, failure_ttl=7 * 24 * 3600,
                             description=f"post {len(to_notify)} alert(s) to ALERT_WEBHOOK_URL")
    return raised


def raise_alert(*, alert_type: AlertType, subject: str, title: str, message: str,
                metadata: dict | None = None) -> uuid.UUID:
    """Raise one alert in the caller's transaction; returns its id (new, or the open one it repeats)."""
    raised = raise_alerts([AlertSpec(alert_type=alert_type, subject=subject, title=title, message=message,
                                     metadata=metadata or {})])
    return (raised.new or raised.repeated)[0]


def list_unresolved(*, alert_type: AlertType | None, severity: Severity | None, limit: int,
                    cursor: str | None) -> Page:
    """Open alerts, newest first, optionally of one type and/or severity."""
    query = select(AlertLog).where(AlertLog.resolved.is_(False))
    if alert_type is not None:
        query = query.where(AlertLog.alert_type == AlertType(alert_type).value)
    if severity is not None:
        query = query.where(AlertLog.severity == Severity(severity).value)
    return keyset_page(query, AlertLog, limit=limit, cursor=cursor)


def get_alert(*, alert_id: uuid.UUID) -> AlertLog:
    """One alert, open or resolved; 404 when there is none."""
    alert = db.session.get(AlertLog, alert_id)
    if alert is None:
        raise NotFound("Alert not found.", error="alert_not_found")
    return alert


def resolve_alert(*, alert_id: uuid.UUID, admin_id: uuid.UUID, note: str,
                  now: dt.datetime | None = None) -> AlertLog:
    """Close an alert with a note, recording who and when; 409 when it is already resolved."""
    if not note or not note.strip():
        raise field_error("note", "A resolution note is required.")
    alert = db.session.execute(select(AlertLog).where(AlertLog.id == alert_id).with_for_update()).scalar_one_or_none()
    if alert is None:
        raise NotFound("Alert not found.", error="alert_not_found")
    if alert.resolved:
        raise Conflict("This alert is already resolved.", error="already_resolved")
    alert.resolved = True
    alert.resolved_at = now or utcnow()
    alert.resolved_by = admin_id
    alert.resolution_note = note.strip()
    db.session.commit()
    log.info("alert_resolved", alert_id=str(alert.id), alert_type=alert.alert_type, admin_id=str(admin_id))
    return alert


def counts_by_severity() -> dict[str, int]:
    """Open alerts per severity (every severity present, zero included)."""
    rows = db.session.execute(text(
        "SELECT severity, count(*) FROM alert_log WHERE NOT resolved GROUP BY severity")).all()
    found = dict(rows)
    return {severity.value: int(found.get(severity.value, 0)) for severity in Severity}


def open_counts() -> dict[tuple[str, str], int]:
    """Open alerts per (type, severity): every type at its severity present, zero included."""
    rows = db.session.execute(text(
        "SELECT alert_type, severity, count(*) FROM alert_log WHERE NOT resolved GROUP BY alert_type, severity")).all()
    counts = {(alert_type.value, alert_type.severity.value): 0 for alert_type in AlertType}
    counts.update({(alert_type, severity): int(n) for alert_type, severity, n in rows})
    return counts
