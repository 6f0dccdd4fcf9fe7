"""Platform gauges read at scrape time (see metrics_export.py): the RQ queues in Redis, and from
PostgreSQL the open alerts and the periodic jobs' last successes. Every read is bounded: Redis by
1 s socket timeouts and one pipelined round trip, PostgreSQL by a 2 s statement timeout over
queries that touch only open alerts (a partial index) and one index range per job."""
from __future__ import annotations

import time

from flask import current_app
from prometheus_client.metrics_core import GaugeMetricFamily
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from wallet_api.alerts.service import open_counts
from wallet_api.database import limit_statement_time
from wallet_api.db_types import utcnow
from wallet_api.extensions import db
from wallet_api.health.service import probe_redis
from wallet_api.jobs import catalog
from wallet_api.jobs.service import last_successes
from wallet_api.metrics_export import MetricSource
from wallet_api.queues import QUEUE_NAMES

STATEMENT_TIMEOUT_MS = 2000


def queue_gauges():
    client = probe_redis()
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for name in QUEUE_NAMES:
        pipe.llen(Queue(name, connection=client).key)
        # Registries score each job by its expiry; what has expired is gone, whether or not RQ cleaned it up.
        pipe.zcount(StartedJobRegistry(name, connection=client).key, now, "+inf")
        pipe.zcount(FailedJobRegistry(name, connection=client).key, now, "+inf")
    answers = pipe.execute()
    waiting = GaugeMetricFamily("wallet_queue_jobs", "Jobs waiting in the RQ queue", labels=["queue"])
    started = GaugeMetricFamily("wallet_queue_started_jobs", "Jobs an RQ worker is running now", labels=["queue"])
    failed = GaugeMetricFamily("wallet_queue_failed_jobs", "Jobs in the queue's RQ failed-job registry",
                               labels=["queue"])
    for index, name in enumerate(QUEUE_NAMES):
        for family, value in zip((waiting, started, failed), answers[3 * index:3 * index + 3]):
            family.add_metric([name], value)
    return [waiting, started, failed]


def alert_gauges():
    limit_statement_time(db.session, STATEMENT_TIMEOUT_MS)
    family = GaugeMetricFamily("wallet_alerts_open", "Unresolved alerts", labels=["alert_type", "severity"])
    for (alert_type, severity), count in sorted(open_counts().items()):
        family.add_metric([alert_type, severity], count)
    return [family]


def job_gauges():
    limit_statement_time(db.session, STATEMENT_TIMEOUT_MS)
    settings = current_app.config["SETTINGS"]
    jobs = [job.name for job in catalog.PERIODIC_JOBS if job.enabled(settings)]
    last = last_successes(names=jobs)
    now = utcnow()
    since = GaugeMetricFamily("wallet_job_seconds_since_success",
                              "Seconds since the periodic job last succeeded (+Inf: never)", labels=["job"])
    at = GaugeMetricFamily("wallet_job_last_success_timestamp_seconds",
                           "Unix time of the periodic job's last success (absent: never)", labels=["job"])
    for name in jobs:
        succeeded = last.get(name)
        since.add_metric([name], (now - succeeded).total_seconds() if succeeded else float("inf"))
        if succeeded:
            at.add_metric([name], succeeded.timestamp())
    return [since, at]


SOURCES = (
    MetricSource("redis", queue_gauges),
    MetricSource("alerts", alert_gauges),
    MetricSource("jobs", job_gauges),
)
