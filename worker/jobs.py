"""RQ jobs. Each takes ids (strings), runs in its own app context, calls one service, and is idempotent.

The periodic jobs (wallet_api/jobs/catalog.py) run inside `run_job`: one recorded run each, never two
of the same job at once, a JOB_CRASH alert when they fail. rq-scheduler calls them with no
arguments (a scheduled run); POST /admin/jobs/<name>/run passes the id of the run it recorded.
"""
from __future__ import annotations

import uuid

import structlog
from flask import current_app
from rq import get_current_job

from wallet_api.alerts import notify
from wallet_api.backups.service import backup_job
from wallet_api.idempotency import purge_expired
from wallet_api.jobs.models import Trigger
from wallet_api.jobs.runner import run_job
from wallet_api.logging import bind_job
from wallet_api.onramp.apply_job import drain_pending, process_event
from wallet_api.onramp.retry_job import run_webhook_maintenance
from wallet_api.reconciliation.provider_job import run_provider_reconciliation
from wallet_api.reconciliation.wallet_job import run_wallet_reconciliation
from worker.runner import job_app_context, stopping

log = structlog.get_logger(__name__)

# A drain hands its worker back after this long (and queues its own continuation), so a warm
# shutdown finishes well inside the platform's 30 seconds between SIGTERM and SIGKILL.
DRAIN_BUDGET_SECONDS = 10.0


def _bind_job() -> None:
    """The job's log context, unless the worker (WalletWorker) bound it already: any RQ worker works."""
    job = get_current_job()
    if job is not None and structlog.contextvars.get_contextvars().get("job_id") != job.id:
        bind_job(job)  # cleared by job_app_context when the job ends


def _periodic(name: str, work, run_id: str | None, trigger: str) -> dict:
    _bind_job()
    with job_app_context():
        return run_job(name, work, trigger=trigger, run_id=uuid.UUID(run_id) if run_id else None)


def drain_webhook_events(helper: bool = False) -> dict:
    """Apply stored webhook events until none is left or the time budget is spent: the stream drain,
    or a helper that joins a backlog (see drain_queue.py)."""
    _bind_job()
    with job_app_context():
        result = drain_pending(budget_seconds=DRAIN_BUDGET_SECONDS, should_stop=stopping, helper=helper)
    return {"processed": result.processed, "more_left": result.more_left}


def process_webhook_event(event_id: str) -> str:
    """Apply one stored webhook event (exactly once, however often this runs). Jobs of this kind were
    queued per event by earlier releases; a deploy may find some still in the queue."""
    _bind_job()
    with job_app_context():
        return process_event(event_id=uuid.UUID(event_id))


def wallet_reconciliation(run_id: str | None = None, trigger: str = Trigger.SCHEDULED) -> dict:
    """Periodic: check cached balances, transaction sums and balance_after chains; flag and alert."""
    return _periodic("wallet-reconciliation", run_wallet_reconciliation, run_id, trigger)


def provider_reconciliation(run_id: str | None = None, trigger: str = Trigger.SCHEDULED) -> dict:
    """Periodic: compare MoonPay's transactions with our on-ramp credits; alert on every difference."""
    return _periodic("provider-reconciliation", run_provider_reconciliation, run_id, trigger)


def webhook_retry(run_id: str | None = None, trigger: str = Trigger.SCHEDULED) -> dict:
    """Periodic: enqueue due webhook retries and re-enqueue stale pending events (the sweeper)."""
    def work() -> dict:
        result = run_webhook_maintenance()
        return {"retried": result.retried, "swept": result.swept, "enqueue_failed": result.enqueue_failed}

    return _periodic("webhook-retry", work, run_id, trigger)


def purge_idempotency_keys(run_id: str | None = None, trigger: str = Trigger.SCHEDULED) -> dict:
    """Periodic: delete API Idempotency-Key records past their expiry."""
    return _periodic("idempotency-purge", lambda: {"purged": purge_expired()}, run_id, trigger)


def alert_notifications(run_id: str | None = None, trigger: str = Trigger.SCHEDULED) -> dict:
    """Periodic: post critical and high alerts whose notification never went out."""
    return _periodic("alert-notifications", notify.sweep_unnotified, run_id, trigger)


def backup(run_id: str | None = None, trigger: str = Trigger.SCHEDULED) -> dict:
    """Periodic (daily, when BACKUP_ENCRYPTION_KEY is set): encrypted pg_dump to BACKUP_DIR and S3; prune."""
    def work() -> dict:
        return backup_job(settings=current_app.config["SETTINGS"],
                          progress=lambda message: log.info("backup_progress", detail=message.strip()))

    return _periodic("backup", work, run_id, trigger)


def notify_alerts(alert_ids: list[str]) -> int:
    """Post new alerts to ALERT_WEBHOOK_URL (queued after the commit that raised them; RQ retries it)."""
    _bind_job()
    with job_app_context():
        return notify.post_alerts(alert_ids=[uuid.UUID(alert_id) for alert_id in alert_ids])
