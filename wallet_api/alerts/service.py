"""Raising alerts (in the caller's transaction) and answering them."""
from __future__ import annotations

import structlog

from wallet_api.alerts.models import AlertLog, AlertType, Severity
from wallet_api.extensions import db

log = structlog.get_logger(__name__)


def raise_alert(*, alert_type: AlertType, severity: Severity, title: str, message: str,
                metadata: dict | None = None) -> AlertLog:
    """Add an alert to the caller's transaction (the caller commits)."""
    alert = AlertLog(alert_type=AlertType(alert_type).value, severity=Severity(severity).value, title=title[:255],
                     message=message, meta=metadata or {}, resolved=False)
    db.session.add(alert)
    log.warning("alert_raised", alert_type=alert.alert_type, severity=alert.severity, title=title)
    return alert
