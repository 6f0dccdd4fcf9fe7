"""Scale-out benchmark: 1 and 2 web processes, 1, 2 and 4 worker processes, next to pgbench (not a test).

    .venv/bin/python bench/scaling.py [--quick] [--web 1,2] [--workers 1,2,4] [--clients 8]
                                      [--seconds 6] [--scenarios transfer,wallets] [--events 300]
                                      [--rounds 1] [--web-concurrency 1] [--redis-db 12] [--no-baseline]

What a second web dyno or more worker dynos buy, measured on this machine with the pieces the
platform runs; bounded in time and count, on loopback only. The machine has few cores shared by
everything (the app, PostgreSQL, Redis, the load generator and whatever else runs), so read the
ratios and the speed-ups, not the absolute rates, and expect the speed-up to stop where the cores do.

Web (bench/request_path.py's pieces): a scratch database with the migrations and `--clients` seeded
client slots; for each count N in `--web`, N gunicorn instances started with `bin/start-web` as the
Procfile does (each its own port and metrics directory, `--web-concurrency` workers each, threads
and pool as shipped), all on one PostgreSQL and one Redis, in production mode behind a pretend
router. `--clients` client processes (keep-alive, closed loop) are spread round-robin over the
instances. Each instance count runs pgbench at the same client count first
(../shared/baseline/run-pgbench, the bare credit transaction), then each scenario.

Workers (bench/webhooks.py's round): for each count N in `--workers`, a backlog of `--events` accepted,
signed MoonPay `completed` webhooks waits while RQ is suspended; N worker processes (`bin/start-worker`,
one RQ worker each: N dynos of WORKER_PROCESSES=1) drain it; exactly-once is checked; pgbench at 4
clients follows in the same round.

Prints req/s (credits/s), latency, CPU per request, the most database connections open during the
runs, the pgbench tx/s of the same round, the ratio to it, and the speed-up over the first count.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import threading
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402
from redis import Redis  # noqa: E402

from bench import request_path as rp  # noqa: E402
from bench import webhooks  # noqa: E402
from wallet_api.local_services import resolve_test_services, with_database  # noqa: E402

note = rp.note
WORKER_BASELINE_CLIENTS = 4  # bench/webhooks.py's denominator


def parse_counts(text: str) -> list[int]:
    return sorted({int(n) for n in text.split(",") if n.strip()})


def scratch_database(admin, admin_url: str, label: str) -> tuple[str, str]:
    name = f"wallet_api_bench_scaling_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    return name, with_database(admin_url, name)


class ConnectionPeak:
    """The most server connections the database `name` had open while the block ran (sampled every
    0.2 s from pg_stat_activity, this sampler's own connection not counted): the connection budget,
    measured."""

    def __init__(self, admin_url: str, name: str):
        self.admin_url, self.name, self.peak = admin_url, name, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self._stop.wait(0.2):
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                                (self.name,))
                    self.peak = max(self.peak, cur.fetchone()[0])
        finally:
            conn.close()

    def __enter__(self) -> ConnectionPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- web processes


def start_instances(env: dict[str, str], count: int, workdir: Path, web_concurrency: int) -> list[tuple]:
    """`count` gunicorn instances as the Procfile starts them; [(process, port)]."""
    started = []
    try:
        for i in range(count):
            port = rp.free_port()
            instance_env = {**env, "PORT": str(port), "WEB_CONCURRENCY": str(web_concurrency),
                            "PROMETHEUS_MULTIPROC_DIR": str(workdir / f"prometheus-{count}-{i}")}
            started.append((rp.start_web(instance_env, port, workdir / f"web-{count}-{i}.log"), port))
    except Exception:
        for process, _ in started:
            rp.stop(process)
        raise
    return started


def measure_web(args, admin, admin_url: str, redis, redis_url: str, baseline: Path | None, workdir: Path) -> list:
    name, database_url = scratch_database(admin, admin_url, "web")
    runs = []
    try:
        env = rp.app_environment(database_url, redis_url, 0, str(workdir / "prometheus"), "production")
        note(f"web: scratch database {name}: migrating and seeding {args.clients} client slots ...")
        slots = rp.migrate_and_seed(env, args.clients)
        for round_no in range(1, args.rounds + 1):
            for count in args.web:
                tps = None
                if baseline is not None:
                    note(f"round {round_no}: pgbench, {args.clients} clients ...")
                    tps = rp.run_baseline(baseline, args.clients, args.seconds)
                instances = start_instances(env, count, workdir, args.web_concurrency)
                try:
                    ports, masters = [port for _, port in instances], [p.pid for p, _ in instances]
                    for scenario in args.scenarios:
                        note(f"round {round_no}: {count} web process(es), {scenario}, {args.clients} clients ...")
                        with ConnectionPeak(admin_url, name) as connections:
                            run = rp.run_scenario(ports, masters, scenario, args.clients, slots, args.seconds)
                        run.round, run.baseline_tps = round_no, tps
                        runs.append((count, run, connections.peak))
                        redis.flushdb()  # enqueued webhook jobs: no worker runs here
                finally:
                    for process, _ in instances:
                        rp.stop(process)
        note(rp.check_books(database_url))
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return runs


def print_web(runs: list, args) -> None:
    print(f"\nWeb processes: {args.clients} client processes spread over N gunicorn instances "
          f"({args.web_concurrency} worker(s) x {os.environ.get('GUNICORN_THREADS', '4 (as shipped)')} threads each), "
          f"production mode, {args.seconds:g} s per run")
    header = (f"{'web':>3} {'scenario':<13} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
              f"{'srv ms/req':>10} {'pg conns':>8} {'pgbench':>8} {'ratio':>6} {'speed-up':>8}")
    print(header + "\n" + "-" * len(header))
    for scenario in args.scenarios:
        first = None
        for count in args.web:
            group = [run for n, run, _ in runs if n == count and run.scenario == scenario]
            peak = max(p for n, run, p in runs if n == count and run.scenario == scenario) if group else 0
            if not group:
                continue
            rate = statistics.median(run.rate for run in group)
            ratios = [run.ratio for run in group if run.ratio is not None]
            tps = [run.baseline_tps for run in group if run.baseline_tps]
            first = first or rate
            print(f"{count:>3} {scenario:<13} {rate:>7.0f} {statistics.median(r.pct(50) for r in group):>7.2f} "
                  f"{statistics.median(r.pct(99) for r in group):>7.2f} {sum(r.errors for r in group):>6} "
                  f"{statistics.median(r.server_ms for r in group):>10.2f} {peak:>8} "
                  f"{(f'{statistics.median(tps):.0f}' if tps else '-'):>8} "
                  f"{(f'{statistics.median(ratios):.3f}' if ratios else '-'):>6} {rate / first:>7.2f}x")


# --------------------------------------------------------------------------- worker processes


def measure_workers(args, admin, admin_url: str, redis_url: str, baseline: Path | None) -> list:
    name, database_url = scratch_database(admin, admin_url, "workers")
    webhooks.REDIS_URL = redis_url  # the module's own default is db 12 of the local server
    results = []
    try:
        env = webhooks.environment(database_url)
        for round_no in range(1, args.rounds + 1):
            for count in args.workers:
                note(f"round {round_no}: {count} worker process(es), backlog of {args.events} webhooks ...")
                with ConnectionPeak(admin_url, name) as connections:
                    result = webhooks.run_round(database_url, env, args.events, count)
                tps = None
                if baseline is not None:
                    note(f"round {round_no}: pgbench, {WORKER_BASELINE_CLIENTS} clients ...")
                    tps = rp.run_baseline(baseline, WORKER_BASELINE_CLIENTS, args.seconds)
                results.append((count, {**result, "connections": connections.peak}, tps))
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return results


def print_workers(results: list, args) -> None:
    print(f"\nWorker processes: a backlog of {args.events} signed webhooks drained by N worker processes "
          f"(one RQ worker each), exactly-once checked; pgbench at {WORKER_BASELINE_CLIENTS} clients")
    header = (f"{'workers':>7} {'credits/s':>9} {'drain s':>8} {'lag p50 s':>9} {'lag p99 s':>9} {'pg conns':>8} "
              f"{'pgbench':>8} "
              f"{'ratio':>6} {'speed-up':>8}")
    print(header + "\n" + "-" * len(header))
    first = None
    for count in args.workers:
        group = [(result, tps) for n, result, tps in results if n == count]
        rate = statistics.median(result["rate"] for result, _ in group)
        tps = [t for _, t in group if t]
        ratio = statistics.median(result["rate"] / t for result, t in group if t) if tps else None
        first = first or rate
        middle = {key: statistics.median(r[key] for r, _ in group) for key in ("seconds", "p50", "p99")}
        peak = max(r["connections"] for r, _ in group)
        print(f"{count:>7} {rate:>9.1f} {middle['seconds']:>8.2f} {middle['p50']:>9.2f} {middle['p99']:>9.2f} "
              f"{peak:>8} "
              f"{(f'{statistics.median(tps):.0f}' if tps else '-'):>8} {(f'{ratio:.3f}' if ratio else '-'):>6} "
              f"{rate / first:>7.2f}x")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--web", default="1,2", help="web process counts (default 1,2; empty to skip)")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts (default 1,2,4; empty to skip)")
    parser.add_argument("--clients", type=int, help="HTTP client processes (default 8; --quick 4)")
    parser.add_argument("--seconds", type=float, help="measured seconds per web run and pgbench (default 6; --quick 3)")
    parser.add_argument("--scenarios", default="transfer,wallets", help="of " + ", ".join(rp.SCENARIOS))
    parser.add_argument("--events", type=int, help="webhook backlog per worker run (default 300; --quick 120)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything; medians over rounds")
    parser.add_argument("--web-concurrency", type=int, default=1,
                        help="gunicorn workers per instance (default 1: N instances = N web processes)")
    parser.add_argument("--quick", action="store_true", help="a short run (each part still overridable)")
    parser.add_argument("--baseline", type=Path, default=Path(os.environ.get("BENCH_BASELINE", rp.DEFAULT_BASELINE)))
    parser.add_argument("--no-baseline", action="store_true", help="skip pgbench and the ratios")
    parser.add_argument("--redis-db", type=int, default=int(os.environ.get("BENCH_REDIS_DB", "12")),
                        help="Redis db of the local server to use and flush (default 12, or $BENCH_REDIS_DB)")
    args = parser.parse_args(argv)
    for name, default, quick in (("clients", 8, 4), ("seconds", 6, 3), ("events", 300, 120)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    args.web, args.workers = parse_counts(args.web), parse_counts(args.workers)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if (set(args.scenarios) - set(rp.SCENARIOS) or args.clients < 1 or args.seconds <= 0 or args.events < 1
            or args.rounds < 1 or min(args.web + args.workers, default=1) < 1):
        parser.error("bad --scenarios, --clients, --seconds, --events, --rounds, --web or --workers")
    baseline = None if args.no_baseline else args.baseline.resolve()
    if baseline is not None and not (baseline.is_file() and os.access(baseline, os.X_OK)):
        note(f"baseline script {baseline} not found: ratios are skipped")
        baseline = None

    admin_url, redis_server = resolve_test_services()
    redis_url = redis_server.rsplit("/", 1)[0] + f"/{args.redis_db}"
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    workdir = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    web_runs, worker_results = [], []
    try:
        if args.web:
            web_runs = measure_web(args, admin, admin_url, redis, redis_url, baseline, workdir)
        if args.workers:
            worker_results = measure_workers(args, admin, admin_url, redis_url, baseline)
    finally:
        redis.flushdb()
        admin.close()
        shutil.rmtree(workdir, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"\nScale-out benchmark, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {os.cpu_count()} CPUs shared by "
          f"the app, PostgreSQL, Redis and the load; 1-min load average at the end {load:.1f}{rp.cpu_pressure()}")
    if baseline is None:
        print("No pgbench baseline: ratios are skipped.")
    if web_runs:
        print_web(web_runs, args)
    if worker_results:
        print_workers(worker_results, args)
    print("\nratio: req/s (credits/s) over pgbench tx/s in the same round; speed-up: over the first count. On one "
          "machine\nmore processes share the same cores with PostgreSQL: the speed-up ends where the CPUs do.\n"
          "pg conns: the most server connections open on the database during the runs (workers: the whole round,\n"
          "seeding included).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
