"""The one metrics interface: services call these functions, exporters read the registry.

Counters and histograms live in prometheus-client's registry (multiprocess mode under gunicorn
when PROMETHEUS_MULTIPROC_DIR is set); each call also writes one structured `metric` log line.
Amounts are passed as Decimal and logged as strings, never as floats.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from decimal import Decimal

import structlog
from prometheus_client import Counter, Histogram

log = structlog.get_logger("wallet_api.metrics")

LEDGER_OPERATIONS = Counter("wallet_ledger_operations_total", "Ledger operations",
                            ["operation", "currency", "success"])
LEDGER_DURATION = Histogram("wallet_ledger_operation_seconds", "Ledger operation duration",
                            ["operation"])
WEBHOOK_EVENTS = Counter("wallet_webhook_events_total", "Webhook deliveries and processing outcomes",
                         ["provider", "stage", "outcome"])
WEBHOOK_DURATION = Histogram("wallet_webhook_processing_seconds", "Webhook processing duration",
                             ["provider", "stage"])


def record_ledger_operation(*, operation: str, success: bool, amount: Decimal | None,
                            currency: str | None, duration_s: float, replayed: bool = False) -> None:
    """Count one ledger operation (credit, debit, transfer...) and its duration."""
    LEDGER_OPERATIONS.labels(operation, currency or "", str(success).lower()).inc()
    LEDGER_DURATION.labels(operation).observe(duration_s)
    log.info("metric", metric="wallet_operation", operation=operation, success=success,
             amount=None if amount is None else str(amount), currency=currency,
             duration_ms=round(duration_s * 1000, 3), replayed=replayed)


def record_webhook(*, provider: str, stage: str, outcome: str, duration_s: float | None = None) -> None:
    """Count one webhook step: stage is `receive` or `process`, outcome e.g. `accepted`, `bad_signature`."""
    WEBHOOK_EVENTS.labels(provider, stage, outcome).inc()
    if duration_s is not None:
        WEBHOOK_DURATION.labels(provider, stage).observe(duration_s)
    log.info("metric", metric="webhook_processing", provider=provider, stage=stage, outcome=outcome,
             duration_ms=None if duration_s is None else round(duration_s * 1000, 3))


@contextmanager
def timed():
    """Yield a callable returning seconds since entry."""
    start = time.perf_counter()
    yield lambda: time.perf_counter() - start
