"""The body of GET /metrics: every process's counters, plus gauges read at scrape time.

- Counters and histograms (metrics.py) are per process. Under gunicorn each worker writes its own
  to files in PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py prepares it) and a scrape sums every
  file, so whichever worker answers reports the whole web process. Without the directory (the
  Flask dev server, tests) the answer is this process's own registry.
- Gauges of state are read from PostgreSQL and Redis when scraped (`MetricSource`s, registered by
  the packages that own the data), so they are right whichever process did the work, an RQ worker
  on another dyno included. Each source is bounded by its own timeouts, cached for CACHE_SECONDS
  per process, and fails alone: `wallet_metrics_source_up{source}` is 0 and its gauges are left
  out, never a 500 for the scrape.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from flask import Flask, current_app
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from wallet_api.extensions import db

log = structlog.get_logger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class MetricSource:
    """A named reader of gauges: `read()` returns metric families and may raise."""

    name: str
    read: Callable[[], Iterable[Metric]]


class ScrapeGauges:
    """A prometheus collector over the sources, each cached and failing on its own."""

    def __init__(self, sources: Iterable[MetricSource], *, cache_seconds: float = CACHE_SECONDS):
        self.sources = tuple(sources)
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, list[Metric] | None]] = {}
        self._lock = threading.Lock()  # one reader per process at a time: concurrent scrapes share its answer

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("wallet_metrics_source_up",
                               "1 when the source's gauges were read at this scrape (or within the cache), else 0",
                               labels=["source"])
        with self._lock:
            for source in self.sources:
                families = self._read(source)
                up.add_metric([source.name], 0 if families is None else 1)
                yield from families or ()
        yield up

    def _read(self, source: MetricSource) -> list[Metric] | None:
        at, families = self._cache.get(source.name, (float("-inf"), None))
        if time.monotonic() - at < self.cache_seconds:
            return families
        try:
            families = list(source.read())
        except Exception as exc:  # noqa: BLE001 - a scrape reports the source as down, it does not fail
            families = None
            log.warning("metrics_source_failed", source=source.name, error=type(exc).__name__)
        finally:
            db.session.rollback()  # every source reads in its own short transaction
        self._cache[source.name] = (time.monotonic(), families)
        return families


def init_app(app: Flask, sources: Iterable[MetricSource]) -> None:
    app.extensions["scrape_gauges"] = ScrapeGauges(sources)


def exposition() -> bytes:
    """The Prometheus text of every counter and histogram, and of the scrape-time gauges."""
    return generate_latest(_Combined(_process_metrics(), current_app.extensions["scrape_gauges"]))


def _process_metrics():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # reads every process's files at each collect
        return registry
    return REGISTRY


class _Combined:
    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()
