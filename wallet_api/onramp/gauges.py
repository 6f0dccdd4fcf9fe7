"""The webhook pipeline's gauges, read at scrape time from PostgreSQL (see metrics_export.py): the
dead letter queue and the events still waiting to be applied, whichever worker applies them. Each
query walks one partial index over unfinished rows only, under a 2 s statement timeout."""
from __future__ import annotations

from prometheus_client.metrics_core import GaugeMetricFamily
from sqlalchemy import func, select

from wallet_api.database import limit_statement_time
from wallet_api.db_types import utcnow
from wallet_api.extensions import db
from wallet_api.metrics_export import MetricSource
from wallet_api.onramp.dead_letters import count_unresolved
from wallet_api.onramp.models import EventStatus, WebhookEvent

STATEMENT_TIMEOUT_MS = 2000
# A backlog is counted up to here: past it the number no longer changes what an operator does.
WAITING_COUNT_CAP = 100_000


def webhook_gauges():
    limit_statement_time(db.session, STATEMENT_TIMEOUT_MS)
    dlq = GaugeMetricFamily("wallet_dlq_entries", "Dead-lettered webhook events waiting for an operator",
                            value=count_unresolved())
    waiting = GaugeMetricFamily("wallet_webhook_events_waiting",
                                f"Stored webhook events not yet applied, by status (counted up to {WAITING_COUNT_CAP})",
                                labels=["status"])
    for status in (EventStatus.PENDING, EventStatus.RETRY_SCHEDULED):
        capped = select(WebhookEvent.id).where(WebhookEvent.status == status).limit(WAITING_COUNT_CAP).subquery()
        waiting.add_metric([status], db.session.scalar(select(func.count()).select_from(capped)))
    oldest = db.session.scalar(select(func.min(WebhookEvent.enqueued_at))
                               .where(WebhookEvent.status == EventStatus.PENDING))
    age = GaugeMetricFamily("wallet_webhook_oldest_pending_seconds",
                            "Seconds since the longest-waiting pending event was queued (0: none waits)",
                            value=max((utcnow() - oldest).total_seconds(), 0.0) if oldest else 0.0)
    return [dlq, waiting, age]


SOURCES = (MetricSource("webhooks", webhook_gauges),)
