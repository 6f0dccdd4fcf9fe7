"""Wallet reconciliation at scale: the job and the CLI check next to the bare set-based SQL.

    .venv/bin/python bench/reconcile.py [--wallets 1000000] [--entries 10000000] [--rounds 1] [--keep-db]

Not a test. It makes a scratch database with the migrations (on TEST_DATABASE_URL's server, else
the local one on 127.0.0.1, else an embedded one), bulk-loads a ledger of `--wallets` USDC user
wallets and `--entries` entries (half of them the wallets' legs, half the MoonPay clearing wallet's:
`--entries / 2` balanced credits with correct balance_after chains and cached balances), plants
known problems (cached balances off, an unbalanced transaction, a broken chain), then times:

  bare SQL   the three check statements of wallet_api/reconciliation/ledger_checks.py, run as
             plain SQL on one psycopg2 connection: the floor any implementation pays;
  job        run_wallet_reconciliation() in an app context: the same checks plus counting,
             flagging, alerting and the credit-spike check;
  CLI        `flask reconcile-balance` as a subprocess (streams every wallet through a
             server-side cursor), with its peak resident memory;

and checks that the job and the CLI found exactly the planted problems. The load runs with the
ledger's triggers off (session_replication_role = replica): it writes a ledger that is correct by
construction, and a per-row deferred trigger would make the load itself the benchmark.
Run it at two sizes to see the CLI's memory stay flat as wallets grow.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLANTED_BALANCE_MISMATCHES = 25


@contextmanager
def scratch_database(keep: bool):
    import psycopg2

    from wallet_api.local_services import resolve_test_services, with_database

    admin_url, redis_url = resolve_test_services()
    name = f"wallet_api_bench_reconcile_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name), redis_url
    finally:
        if not keep:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def make_app(database_url: str, redis_url: str):
    from wallet_api import create_app
    from wallet_api.config import Settings

    return create_app(Settings(app_env="test", database_url=database_url, redis_url=redis_url,
                               jwt_secret="bench-jwt-secret-0123456789abcdef-0123456789",
                               jwt_refresh_secret="bench-refresh-secret-0123456789abcdef-01234",
                               moonpay_webhook_secret="bench", moonpay_secret_key="bench",
                               ratelimit_enabled=False, log_level="ERROR"))


SEED = """
SET session_replication_role = replica;
SET synchronous_commit = off;
SET work_mem = '256MB';
SET maintenance_work_mem = '512MB';
INSERT INTO users (id, email, password_hash, role)
SELECT md5('u' || g)::uuid, 'bench-' || g || '@example.com', 'x', 'USER' FROM generate_series(1, %(wallets)s) g;
INSERT INTO wallets (id, user_id, currency, balance)
SELECT md5('w' || g)::uuid, md5('u' || g)::uuid, 'USDC', 0 FROM generate_series(1, %(wallets)s) g;
CREATE TEMP TABLE bench_credits AS
SELECT g AS n, md5('t' || g)::uuid AS tx, md5('w' || (g %% %(wallets)s + 1))::uuid AS wallet,
       ((g::bigint * 7919) %% 100000 + 1)::numeric / 100 AS amount
FROM generate_series(1, %(credits)s) g;
INSERT INTO ledger_transactions (id, kind, currency, amount, reference, idempotency_key, created_at)
SELECT tx, 'deposit', 'USDC', amount, NULL, 'bench:' || n, now() - interval '2 days'
FROM bench_credits ORDER BY n;
INSERT INTO ledger_entries (transaction_id, wallet_id, currency, amount, balance_after, idempotency_key, created_at)
SELECT tx, wallet, 'USDC', amount, sum(amount) OVER (PARTITION BY wallet ORDER BY n), 'bench:' || n || ':u',
       now() - interval '2 days'
FROM bench_credits ORDER BY n;
INSERT INTO ledger_entries (transaction_id, wallet_id, currency, amount, balance_after, idempotency_key, created_at)
SELECT tx, (SELECT id FROM wallets WHERE system_account = 'moonpay_clearing' AND currency = 'USDC'), 'USDC',
       -amount, NULL, 'bench:' || n || ':c', now() - interval '2 days'
FROM bench_credits ORDER BY n;
UPDATE wallets w SET balance = s.total
FROM (SELECT wallet_id, sum(amount) AS total FROM ledger_entries GROUP BY wallet_id) s
WHERE s.wallet_id = w.id AND w.user_id IS NOT NULL;
"""

PLANT = """
SET session_replication_role = replica;
UPDATE wallets SET balance = balance + 1
WHERE id IN (SELECT md5('w' || g)::uuid FROM generate_series(1, %(mismatches)s) g);
UPDATE ledger_entries SET amount = amount + 1 WHERE idempotency_key = 'bench:1:c';
UPDATE ledger_entries SET balance_after = balance_after + 1
WHERE id = (SELECT id FROM ledger_entries WHERE wallet_id = md5('w' || %(chain_wallet)s)::uuid
            ORDER BY id LIMIT 1);
"""


def seed(database_url: str, redis_url: str, wallets: int, entries: int) -> None:
    import psycopg2
    from flask_migrate import upgrade

    app = make_app(database_url, redis_url)
    with app.app_context():
        upgrade()
        from wallet_api.extensions import db

        db.engine.dispose()
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        started = time.perf_counter()
        cur.execute(SEED, {"wallets": wallets, "credits": entries // 2})
        # A wallet far from the planted mismatches (its first entry gets a wrong balance_after).
        cur.execute(PLANT, {"mismatches": PLANTED_BALANCE_MISMATCHES, "chain_wallet": wallets})
        cur.execute("VACUUM ANALYZE")
        print(f"  loaded {wallets:,} wallets and {entries:,} entries in {time.perf_counter() - started:.0f} s",
              flush=True)
    conn.close()


def bare_sql(database_url: str) -> tuple[float, tuple[int, int, int]]:
    """The checks' own statements, unlimited, as plain SQL: seconds and (mismatches, unbalanced, chains)."""
    import psycopg2

    from wallet_api.reconciliation import ledger_checks

    conn = psycopg2.connect(database_url)
    counts = []
    with conn, conn.cursor() as cur:
        cur.execute("SET work_mem = '64MB'")
        started = time.perf_counter()
        for statement in (ledger_checks._MISMATCHED_BALANCES, ledger_checks._UNBALANCED_TRANSACTIONS,
                          ledger_checks._BROKEN_CHAINS):
            cur.execute(str(statement).replace(":limit", "%(limit)s"), {"limit": 10**9})
            counts.append(len(cur.fetchall()))
        elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, tuple(counts)


def job(database_url: str, redis_url: str) -> tuple[float, dict]:
    from wallet_api.extensions import db
    from wallet_api.reconciliation.wallet_job import run_wallet_reconciliation

    app = make_app(database_url, redis_url)
    with app.app_context():
        started = time.perf_counter()
        counts = run_wallet_reconciliation()
        elapsed = time.perf_counter() - started
        db.session.execute(db.text("DELETE FROM alert_log"))  # the next round starts without open alerts
        db.session.execute(db.text("UPDATE wallets SET needs_reconciliation = false WHERE needs_reconciliation"))
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return elapsed, counts


def cli(database_url: str, redis_url: str) -> tuple[float, float, int, str]:
    """`flask reconcile-balance`: seconds, peak RSS (MiB), exit status, summary line."""
    env = {**os.environ, "APP_ENV": "development", "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "JWT_SECRET": "bench-jwt-secret-0123456789abcdef-0123456789",
           "JWT_REFRESH_SECRET": "bench-refresh-secret-0123456789abcdef-01234",
           "MOONPAY_WEBHOOK_SECRET": "bench", "MOONPAY_SECRET_KEY": "bench", "LOG_LEVEL": "WARNING"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "reconcile-balance"], cwd=ROOT,
                            env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = next((line for line in result.stdout.splitlines() if line.startswith("Checked")), result.stderr[-300:])
    return elapsed, max(peak, before) / 1024, result.returncode, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wallets", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=10_000_000, help="ledger entries (two per credit)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the timings; medians are printed")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the scratch database")
    args = parser.parse_args(argv)
    if args.wallets < 2 * PLANTED_BALANCE_MISMATCHES or args.entries < 2 * args.wallets:
        parser.error("need at least 50 wallets and two entries per wallet")

    with scratch_database(args.keep_db) as (database_url, redis_url):
        print(f"seeding {args.wallets:,} wallets / {args.entries:,} entries ...", flush=True)
        seed(database_url, redis_url, args.wallets, args.entries)
        bare, jobs, clis = [], [], []
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}: bare SQL, job, CLI ...", flush=True)
            bare.append(bare_sql(database_url))
            jobs.append(job(database_url, redis_url))
            clis.append(cli(database_url, redis_url))

    expected = (PLANTED_BALANCE_MISMATCHES, 1, 1)
    bare_s = statistics.median(b[0] for b in bare)
    job_s = statistics.median(j[0] for j in jobs)
    cli_s = statistics.median(c[0] for c in clis)
    found_job = (jobs[0][1]["balance_mismatches"], jobs[0][1]["unbalanced_transactions"], jobs[0][1]["broken_chains"])
    # The CLI checks cached balances (streamed) and transaction sums; chains are the job's.
    print()
    print(f"wallets {args.wallets:,}   entries {args.entries:,}   rounds {args.rounds}   "
          f"(planted: {expected[0]} cached balances off, 1 unbalanced transaction, 1 broken chain)")
    print(f"{'what':<34}{'seconds':>10}{'x bare SQL':>12}{'peak RSS MiB':>14}  found")
    print(f"{'bare SQL (3 check statements)':<34}{bare_s:>10.2f}{1:>12.2f}{'':>14}  {bare[0][1]}")
    print(f"{'wallet reconciliation job':<34}{job_s:>10.2f}{job_s / bare_s:>12.2f}{'':>14}  {found_job}")
    print(f"{'flask reconcile-balance (CLI)':<34}{cli_s:>10.2f}{cli_s / bare_s:>12.2f}"
          f"{max(c[1] for c in clis):>14.0f}  exit {clis[0][2]}: {clis[0][3]}")
    ok = bare[0][1] == expected and found_job == expected and clis[0][2] == 1
    print("\nfindings match the planted problems" if ok else "\nFINDINGS DO NOT MATCH THE PLANTED PROBLEMS")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
