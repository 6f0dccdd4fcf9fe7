"""Redis and the RQ queues. PostgreSQL stays the source of truth: nothing here is the only copy.

Jobs are enqueued only after the transaction that made their rows has committed (a job never
sees a row that was rolled back), and take ids, never ORM objects.
"""
from __future__ import annotations

from flask import current_app
from redis import Redis
from rq import Queue

# Every queue the app enqueues to; the Procfile's worker consumes all of them, in this order.
WEBHOOKS = "webhooks"
DEFAULT = "default"
QUEUE_NAMES = (WEBHOOKS, DEFAULT)


def redis_connection() -> Redis:
    """One client (connection pool) per app."""
    ext = current_app.extensions
    if "wallet_redis" not in ext:
        ext["wallet_redis"] = Redis.from_url(current_app.config["SETTINGS"].redis_url,
                                             socket_connect_timeout=2, socket_timeout=5,
                                             health_check_interval=30)
    return ext["wallet_redis"]


def get_queue(name: str = DEFAULT) -> Queue:
    settings = current_app.config["SETTINGS"]
    return Queue(name, connection=redis_connection(), default_timeout=settings.rq_job_timeout_seconds)
