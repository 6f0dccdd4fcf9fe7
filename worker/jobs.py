"""RQ jobs. Each takes ids (strings), runs in its own app context, calls one service, and is idempotent."""
from __future__ import annotations

import uuid

import structlog
from rq import get_current_job

from worker.runner import job_app_context

log = structlog.get_logger(__name__)


def _bind_job() -> None:
    job = get_current_job()
    structlog.contextvars.clear_contextvars()
    if job is not None:
        structlog.contextvars.bind_contextvars(job_id=job.id, job_func=job.func_name)


def process_webhook_event(event_id: str) -> str:
    """Apply one stored webhook event (exactly once, however often this runs)."""
    from wallet_api.onramp.apply_job import process_event

    _bind_job()
    with job_app_context():
        return process_event(event_id=uuid.UUID(event_id))


def webhook_retry() -> dict:
    """Periodic: enqueue due webhook retries and re-enqueue stale pending events (the sweeper)."""
    from wallet_api.onramp.retry_job import run_webhook_maintenance

    _bind_job()
    with job_app_context():
        result = run_webhook_maintenance()
    return {"retried": result.retried, "swept": result.swept, "enqueue_failed": result.enqueue_failed}


def purge_idempotency_keys() -> int:
    """Periodic: delete API Idempotency-Key records past their expiry."""
    from wallet_api.idempotency import purge_expired

    _bind_job()
    with job_app_context():
        return purge_expired()
