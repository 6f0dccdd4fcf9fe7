"""Every background job an operator can see, schedule or start, as data.

`worker/schedule.py` registers the periodic ones with rq-scheduler under `scheduler_id`;
`POST /admin/jobs/<name>/run` starts one now. Functions are named, not imported, so this module
sits below every domain and the scheduler process never imports the code paths it schedules.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from wallet_api.config import Settings
from wallet_api.queues import DEFAULT

SCHEDULER_ID_PREFIX = "periodic-"


def _always(_settings: Settings) -> bool:
    return True


@dataclass(frozen=True)
class JobSpec:
    name: str                                 # the public name, as in /admin/jobs/<name>/run
    func: str                                 # dotted path of the RQ job function
    description: str
    interval: Callable[[Settings], int]       # seconds between scheduled runs
    timeout: Callable[[Settings], int] = lambda s: s.rq_job_timeout_seconds
    enabled: Callable[[Settings], bool] = _always
    queue: str = DEFAULT

    @property
    def scheduler_id(self) -> str:
        """rq-scheduler's id for this job: stable, so re-registering never duplicates it."""
        return SCHEDULER_ID_PREFIX + self.name


PERIODIC_JOBS: tuple[JobSpec, ...] = (
    JobSpec(name="wallet-reconciliation", func="worker.jobs.wallet_reconciliation",
            description="Cached balances, transaction sums and balance_after chains against the ledger; "
                        "credit spikes. Flags and alerts, never corrects.",
            interval=lambda s: s.wallet_reconciliation_interval_seconds,
            timeout=lambda s: s.reconciliation_job_timeout_seconds),
    JobSpec(name="provider-reconciliation", func="worker.jobs.provider_reconciliation",
            description="MoonPay's transactions since the last successful run against our on-ramp credits.",
            interval=lambda s: s.provider_reconciliation_interval_seconds,
            timeout=lambda s: s.reconciliation_job_timeout_seconds),
    JobSpec(name="webhook-retry", func="worker.jobs.webhook_retry",
            description="Queue due webhook retries; re-queue stored events whose job was lost.",
            interval=lambda s: s.webhook_retry_interval_seconds),
    JobSpec(name="idempotency-purge", func="worker.jobs.purge_idempotency_keys",
            description="Delete Idempotency-Key records past their expiry.",
            interval=lambda s: 3600),
    JobSpec(name="alert-notifications", func="worker.jobs.alert_notifications",
            description="Post critical and high alerts whose notification never went out (ALERT_WEBHOOK_URL).",
            interval=lambda s: s.webhook_retry_interval_seconds,
            enabled=lambda s: bool(s.alert_webhook_url)),
    JobSpec(name="backup", func="worker.jobs.backup",
            description="pg_dump, encrypted (BACKUP_ENCRYPTION_KEY) into BACKUP_DIR and S3 when configured; "
                        "prunes backups past BACKUP_RETENTION_DAYS.",
            interval=lambda s: 24 * 3600,
            timeout=lambda s: s.backup_job_timeout_seconds,
            enabled=lambda s: s.backups_configured),
)
# Run only from the CLI, but recorded like the others.
CLI_JOBS = ("reconcile-balance", "restore-test")
BY_NAME = {job.name: job for job in PERIODIC_JOBS}


def get(name: str) -> JobSpec | None:
    return BY_NAME.get(name)
