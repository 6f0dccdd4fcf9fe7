"""Ledger throughput and latency against a real PostgreSQL, next to pgbench doing the bare SQL.

    .venv/bin/python bench/ledger.py [--workers N] [--seconds 10] [--rounds 1] [--scenarios hot,spread,pairs]
                                     [--no-pgbench] [--keep-db]

Not a test. It creates its own scratch database (on TEST_DATABASE_URL's server, else the local
server on 127.0.0.1, else an embedded one: wallet_api.local_services), builds the schema with the
migrations, runs each scenario with N worker *processes* (no GIL between them; default two per
CPU) for a fixed time, prints a table and drops the database. With --rounds R every run is
repeated and the ratios are medians: on a shared machine single runs are noisy. "cpu/op" is the
client (Python) CPU per operation, which shares the machine's cores with PostgreSQL.

Scenarios (every operation is one committed, balanced ledger transaction of two entries):
  hot     every worker credits the SAME user wallet from the MoonPay clearing wallet: the user
          wallet's row lock serialises them (the ceiling of any design that locks a row).
  spread  worker i credits its own user wallet from the one clearing wallet: the shared system
          wallet is the only common row. Its balance is derived, so it is never locked FOR UPDATE
          nor updated; the entries' foreign key takes FOR KEY SHARE on it, which does not block.
  pairs   worker i transfers back and forth between its own two user wallets: no row is shared
          at all, the "no system wallet" baseline for spread (it locks and updates two wallets
          instead of one, so it does a little more work per operation).

pgbench runs the same transaction as bare SQL (BEGIN; SELECT ... FOR UPDATE; INSERT the
transaction; INSERT both entries; UPDATE the balance(s); COMMIT) on the same database, tables,
triggers and worker count, and the ratio ours/pgbench is printed (target >= 50%).

"lock waits" is the share of sampled busy backends waiting on a heavyweight lock (pg_stat_activity
sampled every 20 ms): high for hot (the queue on the wallet row), near zero for spread if the
clearing wallet is not a hot row.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENARIOS = ("hot", "spread", "pairs")
DEFAULT_WORKERS = 2 * (os.cpu_count() or 2)
AMOUNT = Decimal("1.00")


@dataclass
class Run:
    scenario: str
    engine: str
    workers: int
    ops: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    lock_wait_share: float | None = None
    top_wait: str = ""
    client_cpu_ms: float | None = None  # client (Python) CPU per operation, our runs only
    round: int = 1

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# --- setup ------------------------------------------------------------------------------------

def settings_for(database_url: str, redis_url: str):
    from wallet_api.config import Settings

    return Settings(app_env="test", database_url=database_url, redis_url=redis_url,
                    jwt_secret="bench-jwt-secret-0123456789abcdef-0123456789",
                    jwt_refresh_secret="bench-refresh-secret-0123456789abcdef-01234",
                    moonpay_webhook_secret="bench", moonpay_secret_key="bench", ratelimit_enabled=False,
                    db_pool_size=2, db_max_overflow=2, log_level="WARNING")


def create_schema_and_wallets(database_url: str, redis_url: str, workers: int) -> dict:
    """Migrate, then make the wallets: one hot, one per worker (spread), two per worker (pairs)."""
    from flask_migrate import upgrade
    from sqlalchemy import text

    from wallet_api import create_app
    from wallet_api.auth.models import User
    from wallet_api.extensions import db
    from wallet_api.wallets import ledger
    from wallet_api.wallets.models import SystemAccount, Wallet

    app = create_app(settings_for(database_url, redis_url))
    plan: dict = {"hot": [], "spread": [], "pairs": []}
    with app.app_context():
        upgrade()

        def new_wallet() -> uuid.UUID:
            user = User(email=f"bench-{uuid.uuid4().hex}@example.com", password_hash="x")
            db.session.add(user)
            db.session.flush()
            wallet = Wallet(user_id=user.id, currency="USD")
            db.session.add(wallet)
            db.session.flush()
            return wallet.id

        plan["hot"] = [new_wallet()]
        plan["spread"] = [new_wallet() for _ in range(workers)]
        plan["pairs"] = [(new_wallet(), new_wallet()) for _ in range(workers)]
        db.session.commit()
        for wallet in (w for pair in plan["pairs"] for w in pair):  # enough for every transfer to succeed
            ledger.credit(wallet_id=wallet, amount=Decimal("1000000.00"), kind="bench_seed",
                          counter_account=SystemAccount.MOONPAY_CLEARING,
                          idempotency_key=ledger.entry_key(source="bench", reference=f"seed-{wallet}",
                                                           wallet_id=wallet, action="credit"))
        plan["clearing"] = ledger.system_wallet_id(account=SystemAccount.MOONPAY_CLEARING, currency="USD")
        # pgbench's handle on the same wallets: (scenario, n) -> wallet id, n from 1.
        db.session.execute(text("CREATE TABLE bench_wallets (scenario text, n int, wallet_id uuid, "
                                "other_wallet_id uuid, PRIMARY KEY (scenario, n))"))
        rows = [{"s": "hot", "n": 1, "w": plan["hot"][0], "o": None}]
        rows += [{"s": "spread", "n": i + 1, "w": w, "o": None} for i, w in enumerate(plan["spread"])]
        rows += [{"s": "pairs", "n": i + 1, "w": a, "o": b} for i, (a, b) in enumerate(plan["pairs"])]
        db.session.execute(text("INSERT INTO bench_wallets VALUES (:s, :n, :w, :o)"), rows)
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return plan


# --- our ledger, one process per worker -------------------------------------------------------

def worker_main(index: int, scenario: str, plan: dict, database_url: str, redis_url: str, seconds: float,
                barrier, results) -> None:
    from wallet_api import create_app
    from wallet_api.wallets import ledger
    from wallet_api.wallets.models import SystemAccount

    app = create_app(settings_for(database_url, redis_url))
    counter = 0

    def key(wallet_id, action):
        nonlocal counter
        counter += 1
        return ledger.entry_key(source="bench", reference=f"{os.getpid()}-{counter}", wallet_id=wallet_id,
                                action=action)

    if scenario in ("hot", "spread"):
        wallet = plan["hot"][0] if scenario == "hot" else plan["spread"][index]

        def operation():
            ledger.credit(wallet_id=wallet, amount=AMOUNT, idempotency_key=key(wallet, "credit"),
                          kind="bench_credit", counter_account=SystemAccount.MOONPAY_CLEARING)
    else:
        a, b = plan["pairs"][index]
        direction = [(a, b), (b, a)]

        def operation():
            source, destination = direction[counter % 2]
            ledger.transfer(from_wallet_id=source, to_wallet_id=destination, amount=AMOUNT,
                            idempotency_key=key(source, "debit"))

    latencies, errors = [], 0
    with app.app_context():
        operation()  # warm up: connection, statement caches
        barrier.wait()
        cpu_started = time.process_time()
        deadline = time.perf_counter() + seconds
        while True:
            started = time.perf_counter()
            if started >= deadline:
                break
            try:
                operation()
            except Exception:  # counted; the benchmark reports errors instead of stopping
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
        cpu = time.process_time() - cpu_started
    results.put((index, latencies, errors, cpu))


def run_ours(scenario: str, plan: dict, database_url: str, redis_url: str, workers: int, seconds: float) -> Run:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=worker_main, args=(i, scenario, plan, database_url, redis_url, seconds,
                                                   barrier, results)) for i in range(workers)]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    sampler = WaitSampler(database_url)
    sampler.start()
    started = time.perf_counter()
    collected = [results.get(timeout=seconds + 120) for _ in procs]
    elapsed = time.perf_counter() - started
    sampler.stop()
    for p in procs:
        p.join(30)
    latencies = [ms for _, lat, _, _ in collected for ms in lat]
    run = Run(scenario, "ledger.py", workers, len(latencies), min(elapsed, seconds) or elapsed, latencies,
              sum(e for _, _, e, _ in collected), *sampler.summary())
    run.client_cpu_ms = 1000 * sum(c for *_, c in collected) / max(1, len(latencies))
    return run


# --- pgbench: the same transaction as bare SQL -------------------------------------------------

# pgbench runs in simple-protocol mode, like psycopg2 (every statement parsed and planned each time),
# and pastes variables into the SQL as text: uuids are fetched with quote_literal() to carry quotes.
PGBENCH_CREDIT = """\\set n {n}
BEGIN;
SELECT quote_literal(id) AS wid, balance + 1.00 AS newbal FROM wallets
 WHERE id = (SELECT wallet_id FROM bench_wallets WHERE scenario = '{scenario}' AND n = :n) FOR UPDATE \\gset
INSERT INTO ledger_transactions (id, kind, currency, amount, idempotency_key)
 VALUES (gen_random_uuid(), 'pgbench_credit', 'USD', 1.00, 'pgbench:' || gen_random_uuid())
 RETURNING quote_literal(id) AS txid \\gset
INSERT INTO ledger_entries (transaction_id, wallet_id, currency, amount, balance_after, idempotency_key)
 VALUES (:txid, :wid, 'USD', 1.00, :newbal, 'pgbench:' || gen_random_uuid()),
        (:txid, :clearing, 'USD', -1.00, NULL, 'pgbench:' || gen_random_uuid());
UPDATE wallets SET balance = :newbal, updated_at = now() WHERE id = :wid;
END;
"""

# A transfer between the worker's own two wallets in a random direction; both rows locked in id order.
PGBENCH_PAIRS = """\\set n :client_id + 1
\\set dir random(0, 1)
BEGIN;
SELECT quote_literal(CASE WHEN :dir = 0 THEN b.wallet_id ELSE b.other_wallet_id END) AS src,
       quote_literal(CASE WHEN :dir = 0 THEN b.other_wallet_id ELSE b.wallet_id END) AS dst,
       (SELECT count(*) FROM (SELECT w.id FROM wallets w WHERE w.id IN (b.wallet_id, b.other_wallet_id)
                              ORDER BY w.id FOR UPDATE) l) AS locked
 FROM bench_wallets b WHERE b.scenario = 'pairs' AND b.n = :n \\gset
INSERT INTO ledger_transactions (id, kind, currency, amount, idempotency_key)
 VALUES (gen_random_uuid(), 'pgbench_transfer', 'USD', 1.00, 'pgbench:' || gen_random_uuid())
 RETURNING quote_literal(id) AS txid \\gset
INSERT INTO ledger_entries (transaction_id, wallet_id, currency, amount, balance_after, idempotency_key)
 SELECT :txid, w.id, 'USD', CASE WHEN w.id = :src THEN -1.00 ELSE 1.00 END,
        w.balance + CASE WHEN w.id = :src THEN -1.00 ELSE 1.00 END, 'pgbench:' || gen_random_uuid()
 FROM wallets w WHERE w.id IN (:src, :dst);
UPDATE wallets SET balance = balance + CASE WHEN id = :src THEN -1.00 ELSE 1.00 END, updated_at = now()
 WHERE id IN (:src, :dst);
END;
"""


def pgbench_script(scenario: str) -> str:
    if scenario == "pairs":
        return PGBENCH_PAIRS
    return PGBENCH_CREDIT.format(n="1" if scenario == "hot" else ":client_id + 1", scenario=scenario)


def run_pgbench(scenario: str, plan: dict, database_url: str, workers: int, seconds: float) -> Run | None:
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    workdir = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    try:
        script = workdir / f"{scenario}.sql"
        script.write_text(pgbench_script(scenario))
        cmd = ["pgbench", "-n", "-M", "simple", "-c", str(workers), "-j", str(workers), "-T", str(int(seconds)),
               "-f", str(script), "-D", f"clearing='{plan['clearing']}'", "-l",
               "--log-prefix", str(workdir / "log"),
               "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres",
               url.database]
        env = dict(os.environ, PGPASSWORD=url.password or "")
        sampler = WaitSampler(database_url)
        sampler.start()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 120)
        sampler.stop()
        if done.returncode != 0:
            print(f"pgbench ({scenario}) failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return None
        latencies = []
        for log in workdir.glob("log*"):
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    latencies.append(int(parts[2]) / 1000)
        match = re.search(r"number of failed transactions: (\d+)", done.stdout)
        failed = int(match.group(1)) if match else 0
        return Run(scenario, "pgbench", workers, len(latencies), seconds, latencies, failed, *sampler.summary())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- lock-wait sampling -------------------------------------------------------------------------

class WaitSampler(threading.Thread):
    """Samples pg_stat_activity of the bench database: what busy backends wait on."""

    def __init__(self, database_url: str):
        super().__init__(daemon=True)
        self.database_url = database_url
        self._halt = threading.Event()
        self.busy = 0
        self.waits: Counter = Counter()

    def run(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.database_url.replace("postgresql+psycopg2://", "postgresql://"))
        conn.autocommit = True
        cur = conn.cursor()
        while not self._halt.is_set():
            cur.execute("""SELECT wait_event_type, wait_event FROM pg_stat_activity
                           WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'""")
            for wait_type, wait_event in cur.fetchall():
                self.busy += 1
                if wait_type:
                    self.waits[f"{wait_type}:{wait_event}"] += 1
            time.sleep(0.02)
        conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def summary(self) -> tuple[float | None, str]:
        if not self.busy:
            return None, ""
        lock = sum(n for name, n in self.waits.items() if name.startswith("Lock:"))
        top = ", ".join(f"{name} {n / self.busy:.0%}" for name, n in self.waits.most_common(2))
        return lock / self.busy, top


# --- main ---------------------------------------------------------------------------------------

def print_table(runs: list[Run], workers: int, seconds: float) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nLedger benchmark: {workers} workers, {seconds:g} s per run, {os.cpu_count()} CPU(s) shared by "
          f"PostgreSQL and the clients (1-min load average at the end: {load:.1f})\n")
    header = f"{'round':>5} {'scenario':<8} {'engine':<10} {'ops':>7} {'ops/s':>8} {'p50 ms':>7} {'p95 ms':>7} " \
             f"{'p99 ms':>7} {'errors':>6} {'cpu/op':>6} {'lock waits':>10}  top wait events (share of busy backends)"
    print(header)
    print("-" * len(header))
    for run in runs:
        share = "-" if run.lock_wait_share is None else f"{run.lock_wait_share:.0%}"
        cpu = "-" if run.client_cpu_ms is None else f"{run.client_cpu_ms:.2f}"
        print(f"{run.round:>5} {run.scenario:<8} {run.engine:<10} {run.ops:>7} {run.rate:>8.0f} {run.pct(50):>7.2f} "
              f"{run.pct(95):>7.2f} {run.pct(99):>7.2f} {run.errors:>6} {cpu:>6} {share:>10}  {run.top_wait}")
    print("\ncpu/op: client CPU (user + system) per operation of our worker processes, in ms.\n")
    by_key = {(r.round, r.scenario, r.engine): r for r in runs}
    rounds = sorted({r.round for r in runs})

    def ratios(first: tuple[str, str], second: tuple[str, str]) -> list[float]:
        pairs = [(by_key.get((n, *first)), by_key.get((n, *second))) for n in rounds]
        return [a.rate / b.rate for a, b in pairs if a and b and b.rate]

    for scenario in SCENARIOS:
        found = ratios((scenario, "ledger.py"), (scenario, "pgbench"))
        if found:
            ratio = statistics.median(found)
            verdict = "ok" if ratio >= 0.5 else "BELOW the 50% target"
            each = f" (rounds: {', '.join(f'{r:.0%}' for r in found)})" if len(found) > 1 else ""
            print(f"{scenario:<8} ours/pgbench = {ratio:.0%}  ({verdict}){each}")
    found = ratios(("spread", "ledger.py"), ("pairs", "ledger.py"))
    if found:
        print(f"spread/pairs (one shared clearing wallet vs no shared row) = {statistics.median(found):.0%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"concurrent worker processes (default 2 per CPU: {DEFAULT_WORKERS})")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every run; ratios are medians over rounds (a shared machine is noisy)")
    parser.add_argument("--seconds", type=float, default=10, help="duration of each run (default 10)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of "
                        + ", ".join(SCENARIOS))
    parser.add_argument("--no-pgbench", action="store_true", help="skip the pgbench comparison")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the scratch database")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown or args.workers < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error(f"bad arguments: unknown scenarios {sorted(unknown)}" if unknown else "bad arguments")

    import psycopg2

    from wallet_api.local_services import resolve_test_services, with_database

    admin_url, redis_url = resolve_test_services()
    name = f"wallet_api_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    database_url = with_database(admin_url, name)
    runs: list[Run] = []
    try:
        print(f"scratch database {name}: migrating and creating wallets ...", flush=True)
        plan = create_schema_and_wallets(database_url, redis_url, args.workers)
        have_pgbench = shutil.which("pgbench") is not None and not args.no_pgbench
        if not have_pgbench and not args.no_pgbench:
            print("pgbench is not on PATH: skipping the bare-SQL comparison", file=sys.stderr)
        for round_no in range(1, args.rounds + 1):
            for scenario in scenarios:  # ours and pgbench back to back, so both see the same machine
                print(f"round {round_no}: {scenario} (ledger.py) ...", flush=True)
                run = run_ours(scenario, plan, database_url, redis_url, args.workers, args.seconds)
                run.round = round_no
                runs.append(run)
                if have_pgbench:
                    print(f"round {round_no}: {scenario} (pgbench) ...", flush=True)
                    bare = run_pgbench(scenario, plan, database_url, args.workers, args.seconds)
                    if bare:
                        bare.round = round_no
                        runs.append(bare)
        check_books(database_url)
        print_table(runs, args.workers, args.seconds)
    finally:
        if not args.keep_db:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    return 0


def check_books(database_url: str) -> None:
    """After all runs: every transaction balanced, every user wallet equal to its entries."""
    import psycopg2

    conn = psycopg2.connect(database_url)
    cur = conn.cursor()
    cur.execute("""SELECT count(*) FROM wallets w WHERE user_id IS NOT NULL AND balance <>
                   (SELECT coalesce(sum(amount), 0) FROM ledger_entries e WHERE e.wallet_id = w.id)""")
    drifted = cur.fetchone()[0]
    cur.execute("SELECT coalesce(sum(amount), 0) FROM ledger_entries")
    total = cur.fetchone()[0]
    conn.close()
    print(f"books after the runs: {drifted} drifted wallets, sum of all entries = {total}")


if __name__ == "__main__":
    sys.exit(main())
