"""The overview page's answer to "is money right, and what is stuck?", gathered from the services."""
from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import RedisError

from wallet_api.alerts import service as alerts
from wallet_api.health.service import readiness_checks
from wallet_api.jobs import service as jobs
from wallet_api.jobs.service import JobStatus
from wallet_api.onramp import dead_letters
from wallet_api.queues import QUEUE_NAMES, get_queue
from wallet_api.wallets import service as wallet_service


@dataclass(frozen=True)
class QueueDepth:
    name: str
    waiting: int     # queued for a worker
    running: int     # taken by a worker
    scheduled: int   # retries waiting for their time
    failed: int      # failed for good (kept for a week)


@dataclass(frozen=True)
class Overview:
    checks: dict[str, dict]
    ready: bool
    open_alerts: dict[str, int]
    dlq_size: int
    flagged_wallets: int
    queues: list[QueueDepth] | None  # None while Redis is unreachable
    jobs: list[JobStatus]


def overview() -> Overview:
    """Readiness, open alerts per severity, the DLQ, flagged wallets, queue depths and the jobs."""
    checks = readiness_checks()
    return Overview(checks=checks, ready=all(check["ok"] for check in checks.values()),
                    open_alerts=alerts.counts_by_severity(), dlq_size=dead_letters.count_unresolved(),
                    flagged_wallets=wallet_service.count_user_wallets(needs_reconciliation=True),
                    queues=queue_depths(), jobs=jobs.job_statuses())


def queue_depths() -> list[QueueDepth] | None:
    """Each RQ queue's jobs by state, read without RQ's registry clean-ups; None when Redis is unreachable."""
    try:
        depths = []
        for name in QUEUE_NAMES:
            queue = get_queue(name)
            depths.append(QueueDepth(
                name=name, waiting=queue.count,
                running=queue.started_job_registry.get_job_count(cleanup=False),
                scheduled=queue.scheduled_job_registry.get_job_count(cleanup=False),
                failed=queue.failed_job_registry.get_job_count(cleanup=False)))
        return depths
    except RedisError:
        return None
