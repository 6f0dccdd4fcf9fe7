"""Benchmark: where one drain's time goes, statement by statement (not a test).

    .venv/bin/python bench/drain_statements.py [--events 1000] [--profile PATH]

On a scratch database (made by the migrations) and BENCH_REDIS_URL (as bench/webhooks.py, whose
set-up it reuses), accepts `--events` signed `completed` webhooks through the app, then runs one
drain (`apply_job.drain_pending`) in this process, with no RQ and no other worker. Prints events/s,
the drain's Python CPU and wall time per event, and each distinct statement: how often it ran and
the time spent waiting for it, per event and per statement (psycopg2's BEGIN and COMMIT are not
statements here: BEGIN rides on the first statement's time). `--profile PATH` also writes a
cProfile of the drain (slower). The machine's other load shows in the wall time, less in the CPU.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import psycopg2
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import webhooks  # noqa: E402 - after the path set-up, like the other benchmarks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--profile", type=Path, help="write a cProfile of the drain here")
    args = parser.parse_args()

    name = f"wallet_api_bench_drain_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = psycopg2.connect(webhooks.PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        env = webhooks.environment(webhooks.PG_ADMIN.rsplit("/", 1)[0] + "/" + name)
        os.environ.update(env)
        Redis.from_url(webhooks.REDIS_URL).flushdb()
        app = webhooks.make_app(env)
        webhooks.log(f"seeding and accepting {args.events} webhooks ...")
        webhooks.accept_backlog(app, webhooks.seed(app, args.events))
        processed, wall, cpu, stats = drain(app, args.profile)
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        Redis.from_url(webhooks.REDIS_URL).flushdb()

    print(f"\none drain in this process: {processed} events in {wall:.2f} s, {processed / wall:.0f} events/s; "
          f"Python CPU {1000 * cpu / processed:.2f} ms an event, wall {1000 * wall / processed:.2f} ms an event")
    print(f"{'count':>7}{'ms/event':>10}{'ms/stmt':>9}  statement")
    for statement, (count, seconds) in sorted(stats.items(), key=lambda item: -item[1][1]):
        print(f"{count:>7}{1000 * seconds / processed:>10.3f}{1000 * seconds / count:>9.3f}  {statement}")
    total = sum(seconds for _, seconds in stats.values())
    print(f"statements: {sum(count for count, _ in stats.values()) / processed:.1f} an event, "
          f"{1000 * total / processed:.2f} ms an event")
    return 0


def drain(app, profile: Path | None):
    from sqlalchemy import event

    from wallet_api.extensions import db
    from wallet_api.onramp.apply_job import drain_pending

    stats: dict[str, list] = defaultdict(lambda: [0, 0.0])
    with app.app_context():
        engine = db.engine

        @event.listens_for(engine, "before_cursor_execute")
        def started(conn, cursor, statement, parameters, context, executemany):
            conn.info["bench_started"] = time.perf_counter()

        @event.listens_for(engine, "after_cursor_execute")
        def finished(conn, cursor, statement, parameters, context, executemany):
            entry = stats[" ".join(statement.split())[:90]]
            entry[0] += 1
            entry[1] += time.perf_counter() - conn.info["bench_started"]

        profiler = cProfile.Profile() if profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        result = drain_pending(budget_seconds=3600, should_stop=lambda: False)
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        db.session.remove()
    return result.processed, wall, cpu, stats


if __name__ == "__main__":
    raise SystemExit(main())
