"""The one metrics interface: services call these functions, GET /metrics reads the registry.

Counters and histograms live in prometheus-client's registry (multiprocess mode under gunicorn:
see gunicorn.conf.py and metrics_export.py); each call also writes one structured `metric` log
line, which is how the numbers of a process nobody scrapes (an RQ worker dyno) still reach an
operator. Amounts are passed as Decimal and logged as strings; only the Prometheus amount counter
holds them as floats, for dashboards: the ledger is the exact record. Every metric and its labels:
docs/OBSERVABILITY.md.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from decimal import Decimal

import structlog
from flask import Flask, Response, g, request
from prometheus_client import Counter, Histogram

log = structlog.get_logger("wallet_api.metrics")

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # A config var reaches every dyno, but only the web process prepares the directory (gunicorn.conf.py):
    # without it the first count in a worker or a CLI command would raise, inside a ledger operation.
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

HTTP_REQUESTS = Counter("wallet_http_requests_total", "HTTP requests answered, by route template",
                        ["route", "method", "status"])
HTTP_DURATION = Histogram("wallet_http_request_seconds", "HTTP request duration, by route template",
                          ["route", "method"])
LEDGER_OPERATIONS = Counter("wallet_ledger_operations_total", "Ledger operations",
                            ["operation", "currency", "outcome"])
LEDGER_AMOUNT = Counter("wallet_ledger_amount_total", "Money moved by ledger operations (approximate: a float)",
                        ["operation", "currency"])
LEDGER_DURATION = Histogram("wallet_ledger_operation_seconds", "Ledger operation duration",
                            ["operation"])
WEBHOOK_EVENTS = Counter("wallet_webhook_events_total", "Webhook deliveries and processing outcomes",
                         ["provider", "stage", "outcome"])
WEBHOOK_DURATION = Histogram("wallet_webhook_processing_seconds", "Webhook processing duration",
                             ["provider", "stage"])


# The label of a request no route matched (404, 405): one value, whatever the path, so a scan of
# random URLs cannot grow the number of series.
UNMATCHED_ROUTE = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def record_ledger_operation(*, operation: str, success: bool, amount: Decimal | None,
                            currency: str | None, duration_s: float, replayed: bool = False,
                            error: str | None = None) -> None:
    """Count one ledger operation (credit, debit, transfer...), its amount when it moved money, and its
    duration. `error` is the refusal's stable name (e.g. `insufficient_funds`) when it failed."""
    outcome = ("replayed" if replayed else "ok") if success else (error or "error")
    LEDGER_OPERATIONS.labels(operation, currency or "", outcome).inc()
    if success and not replayed and amount is not None and currency:
        LEDGER_AMOUNT.labels(operation, currency).inc(float(amount))
    LEDGER_DURATION.labels(operation).observe(duration_s)
    log.info("metric", metric="wallet_operation", operation=operation, success=success, outcome=outcome,
             amount=None if amount is None else str(amount), currency=currency,
             duration_ms=round(duration_s * 1000, 3), replayed=replayed)


def record_webhook(*, provider: str, stage: str, outcome: str, duration_s: float | None = None) -> None:
    """Count one webhook step: stage `receive`, `process`, `maintenance`, `enqueue` or `dead_letter`; outcome
    e.g. `accepted`, `signature_mismatch`, `credited`, `retry_scheduled` (docs/OBSERVABILITY.md lists them)."""
    WEBHOOK_EVENTS.labels(provider, stage, outcome).inc()
    if duration_s is not None:
        WEBHOOK_DURATION.labels(provider, stage).observe(duration_s)
    log.info("metric", metric="webhook_processing", provider=provider, stage=stage, outcome=outcome,
             duration_ms=None if duration_s is None else round(duration_s * 1000, 3))


def init_request_metrics(app: Flask) -> None:
    """Count every response and time it, labelled by the matched route's template (`/wallets/<uuid:wallet_id>`),
    never the raw path. Register before any other request hook, so even requests that another
    `before_request` answers (a 429, the HTTPS redirect) are timed from the start."""

    @app.before_request
    def start_timer():
        g.metrics_started = time.perf_counter()

    @app.after_request
    def record(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        method = request.method if request.method in _METHODS else "other"
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        started = g.get("metrics_started")
        if started is not None:
            HTTP_DURATION.labels(route, method).observe(time.perf_counter() - started)
        return response


@contextmanager
def timed():
    """Yield a callable returning seconds since entry."""
    start = time.perf_counter()
    yield lambda: time.perf_counter() - start
