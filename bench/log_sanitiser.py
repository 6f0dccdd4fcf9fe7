"""What the log sanitiser costs per line, next to the whole cost of writing that line.

    .venv/bin/python bench/log_sanitiser.py [--lines 20000] [--rounds 5]

Not a test; needs no database. Each case is a line the platform writes (the request line every
request logs, a worker line, an AUDIT line, a line with nested secrets and a card number). For each
it prints the sanitiser alone (`sanitise_event` on the event dict), and the whole line through the
real logging configuration (JSON, rendered to an in-memory stream) with the sanitiser and with it
replaced by a no-op. The share is "sanitiser alone" over "whole line with it" (the difference of
the two whole-line columns says the same, with the machine's noise in it).
Medians of --rounds rounds, in CPU microseconds of this process per line.
"""
from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402

from wallet_api.logging import configure_logging  # noqa: E402
from wallet_api.log_sanitiser import sanitise_event  # noqa: E402

CONTEXT = {"request_id": "5f0c1a9e8b7d4c3a2b1f0e9d8c7b6a59", "method": "GET",
           "path": "/wallets/3f2a6c1e-1234-4d3b-9abc-0123456789ab",
           "user_id": "392d6323-488d-488e-a989-0b1576b9c317", "wallet_id": "3f2a6c1e-1234-4d3b-9abc-0123456789ab"}
CASES = {
    "request line": ("wallet_api.request", "request", {"status": 200, "duration_ms": 3.21}),
    "worker line": ("wallet_api.onramp.apply_job", "webhook_processed", {
        "outcome": "credited", "event_id": "7eec0e60-1768-4787-bbdc-9110173d1993", "external_status": "completed",
        "attempt": 1, "job_id": "0b2c6f1e-9d8a-4b7c-8e6f-5a4b3c2d1e0f",
        "job_name": "worker.jobs.drain_webhook_events"}),
    "audit line": ("wallet_api.audit", "money_moved", {
        "channel": "audit", "operation": "transfer", "transaction_id": "1d2c3b4a-5968-4776-8594-a3b2c1d0e9f8",
        "kind": "transfer", "amount": "12.50", "currency": "USD", "from_wallet_id": CONTEXT["wallet_id"],
        "to_wallet_id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", "counter_account": None,
        "actor": CONTEXT["user_id"], "reference": "rent november"}),
    "nested secrets": ("probe", "outbound_call", {
        "headers": [("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"), ("Accept", "json")],
        "body": {"card": {"number": "4111 1111 1111 1111", "holder": "A. Person"}, "password": "hunter2"},
        "detail": "refused: token=abc123 for 4111-1111-1111-1111"}),
}


def _per_line_us(fn, lines: int) -> float:
    # CPU time of this process: on a shared machine, wall time mostly measures the neighbours.
    started = time.process_time()
    for _ in range(lines):
        fn()
    return (time.process_time() - started) / lines * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    configure_logging(level="INFO", json=True)
    (handler,) = logging.getLogger().handlers
    sink = io.StringIO()
    handler.setStream(sink)
    structlog.contextvars.bind_contextvars(**CONTEXT)
    chain = handler.formatter.processors  # the formatter's list: swap the sanitiser in and out
    slot = chain.index(sanitise_event)

    def noop(_logger, _name, event_dict):
        return event_dict

    rows = []
    for name, (logger_name, event, fields) in CASES.items():
        log = structlog.get_logger(logger_name)
        event_dict = {**CONTEXT, **fields, "event": event, "level": "info", "logger": logger_name,
                      "timestamp": "2026-11-28T10:00:00.000000Z"}
        alone, with_it, without = [], [], []
        for _ in range(args.rounds):
            alone.append(_per_line_us(lambda: sanitise_event(None, "info", dict(event_dict)), args.lines))
            chain[slot] = sanitise_event
            with_it.append(_per_line_us(lambda: log.info(event, **fields), args.lines))
            chain[slot] = noop
            without.append(_per_line_us(lambda: log.info(event, **fields), args.lines))
            chain[slot] = sanitise_event
            sink.seek(0)
            sink.truncate()
        a, w, wo = (statistics.median(x) for x in (alone, with_it, without))
        rows.append((name, a, w, wo, a / w * 100 if w else 0.0))

    print(f"| line ({args.lines} lines x {args.rounds} rounds, medians) | sanitiser alone, CPU us | "
          "whole line with it, CPU us | whole line without, CPU us | sanitiser's share |")
    print("|---|---:|---:|---:|---:|")
    for name, a, w, wo, share in rows:
        print(f"| {name} | {a:.1f} | {w:.1f} | {wo:.1f} | {share:.0f}% |")


if __name__ == "__main__":
    main()
