"""Benchmark: how fast the worker pool turns a backlog of accepted webhooks into credits (not a test).

    .venv/bin/python bench/webhooks.py [--events 600] [--workers 2] [--rounds 1] [--pgbench-seconds 10]

On a scratch PostgreSQL database (made by the migrations) and a Redis db of its own
(BENCH_REDIS_URL, default redis://127.0.0.1:6379/12, flushed), each round:
1. makes `--events` distinct purchases over 50 ETH wallets and accepts one signed MoonPay
   `completed` webhook for each through the app (the real intake: verify, store, ask for
   processing), with RQ suspended, so the whole backlog waits in PostgreSQL and Redis;
2. starts `--workers` worker processes exactly as `bin/start-worker` does (one process each),
   waits until they are up, resumes RQ, and times until every purchase is credited;
3. checks exactly-once: one credit per purchase, balances equal to their entries;
4. runs the bare 5-statement credit transaction in pgbench at 4 clients over 10,000 wallets
   (`../shared/baseline/run-pgbench`, or BENCH_PGBENCH_SCRIPT) on the same server in the same run.
Prints credits/s, the webhook-to-credit lag (p50/p99, from receipt to credit, so it includes the
wait behind the backlog) and the ratio credits/s / pgbench tx/s. Webhook *acceptance* (the HTTP
request path) is measured by bench/request_path.py.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg2
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VENV_BIN = Path(sys.executable).parent
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
PGBENCH = Path(os.environ.get("BENCH_PGBENCH_SCRIPT", ROOT.parent / "shared" / "baseline" / "run-pgbench"))
WEBHOOK_SECRET = "wk_bench_webhook_secret"
WALLETS = 50


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def environment(database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "APP_ENV": "development", "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
        "JWT_SECRET": "bench-jwt-secret-0123456789abcdef-0123456789",
        "JWT_REFRESH_SECRET": "bench-refresh-secret-0123456789abcdef-01234",
        "MOONPAY_WEBHOOK_SECRET": WEBHOOK_SECRET, "MOONPAY_SECRET_KEY": "sk_bench", "LOG_LEVEL": "WARNING",
        "RATELIMIT_ENABLED": "false", "WORKER_PROCESSES": "1", "PYTHONPATH": str(ROOT),
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    return env


def make_app(env):
    from wallet_api import create_app
    from wallet_api.config import load_settings

    return create_app(load_settings(env))


def seed(app, events: int) -> list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]:
    """Migrate; WALLETS users with an ETH wallet; `events` pending purchases: (onramp, user, wallet)."""
    from flask_migrate import upgrade

    from wallet_api.extensions import db
    from wallet_api.onramp import service
    from wallet_api.wallets import service as wallet_service

    with app.app_context():
        upgrade()
        pairs = []
        for i in range(WALLETS):
            user_id = uuid.uuid4()
            db.session.execute(db.text("INSERT INTO users (id, email, password_hash, role) VALUES (:i, :e, 'x', 'USER')"),
                               {"i": user_id, "e": f"bench-{i}-{user_id.hex[:6]}@example.com"})
            db.session.commit()
            pairs.append((user_id, wallet_service.create_wallet(user_id=user_id, currency="ETH").id))
        made = []
        for i in range(events):
            user_id, wallet_id = pairs[i % WALLETS]
            session = service.create_session(user_id=user_id, wallet_id=wallet_id, base_currency="usd",
                                             base_amount=Decimal("10"))
            made.append((session.transaction.id, user_id, wallet_id))
        db.session.remove()
    return made


def webhook(onramp_id, user_id, n: int) -> bytes:
    return json.dumps({"type": "transaction_updated", "data": {
        "id": f"mp_bench_{onramp_id.hex}", "status": "completed", "externalTransactionId": str(onramp_id),
        "externalCustomerId": str(user_id), "quoteCurrencyAmount": 0.01, "baseCurrencyAmount": 10,
        "currency": {"code": "eth"}, "baseCurrency": {"code": "usd"}, "cryptoTransactionId": f"0x{n:064x}",
        "createdAt": "2026-11-28T10:00:00Z", "updatedAt": f"2026-11-28T10:00:{n % 60:02d}Z"}}).encode()


def accept_backlog(app, purchases) -> None:
    client = app.test_client()
    for n, (onramp_id, user_id, _wallet) in enumerate(purchases):
        body = webhook(onramp_id, user_id, n)
        t = int(time.time())
        signature = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        response = client.post("/webhooks/moonpay", data=body, content_type="application/json",
                               headers={"Moonpay-Signature-V2": f"t={t},s={signature}"})
        if response.status_code != 200:
            raise RuntimeError(f"webhook refused: {response.status_code} {response.get_data(as_text=True)}")


def start_workers(env, count: int, connection: Redis) -> list[subprocess.Popen]:
    from rq import Worker

    workers = [subprocess.Popen([str(ROOT / "bin" / "start-worker")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(count)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(Worker.all(connection=connection)) >= count:
            return workers
        time.sleep(0.1)
    stop(workers)
    raise RuntimeError("workers did not start")


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def scalar(url: str, sql: str):
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


def pgbench(seconds: int) -> float | None:
    if not PGBENCH.exists():
        log(f"{PGBENCH} not found: no pgbench baseline in this run")
        return None
    out = subprocess.run([str(PGBENCH), "4", str(seconds)], capture_output=True, text=True)
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("tps "):
            return float(line.split()[1])
    log(f"pgbench failed: {out.stderr[-400:]}")
    return None


def run_round(database_url: str, env, events: int, workers: int) -> dict:
    from rq.suspension import resume, suspend

    connection = Redis.from_url(REDIS_URL)
    connection.flushdb()
    app = make_app(env)
    log(f"  seeding {events} purchases ...")
    purchases = seed(app, events)
    # The ledger is append-only, so earlier rounds' credits stay: count this round's only.
    credits_before = scalar(database_url, "SELECT count(*) FROM ledger_transactions WHERE kind = 'onramp_credit'")
    suspend(connection)
    log(f"  accepting {events} webhooks (RQ suspended) ...")
    accept_backlog(app, purchases)
    processes = start_workers(env, workers, connection)
    try:
        started = time.perf_counter()
        resume(connection)
        deadline = started + 600
        while scalar(database_url, "SELECT count(*) FROM onramp_transactions WHERE status = 'completed'") < events:
            if time.perf_counter() > deadline:
                raise RuntimeError("the backlog was not credited within 10 minutes")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        stop(processes)
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM o.completed_at - e.received_at) FROM onramp_transactions o "
                    "JOIN webhook_events e ON e.external_id = o.moonpay_transaction_id ORDER BY 1")
        lags = [float(row[0]) for row in cur.fetchall()]
        cur.execute("SELECT count(*) FROM ledger_transactions WHERE kind = 'onramp_credit'")
        credits = cur.fetchone()[0] - credits_before
        cur.execute("SELECT count(*) FROM wallets w WHERE user_id IS NOT NULL AND balance <> "
                    "(SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE wallet_id = w.id)")
        off = cur.fetchone()[0]
        cur.execute("TRUNCATE onramp_transactions, webhook_events, dead_letter_queue, alert_log, job_runs CASCADE")
        conn.commit()
    conn.close()
    if credits != events or off:
        raise RuntimeError(f"exactly-once violated: {credits} credits for {events} purchases, {off} wallets off")
    return {"seconds": elapsed, "rate": events / elapsed, "p50": statistics.median(lags),
            "p99": lags[min(len(lags) - 1, int(0.99 * len(lags)))]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat; medians are printed")
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    args = parser.parse_args()

    name = f"wallet_api_bench_webhooks_{os.getpid()}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    database_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    env = environment(database_url)
    rounds, baselines = [], []
    try:
        for round_no in range(1, args.rounds + 1):
            log(f"round {round_no}: backlog of {args.events} webhooks, {args.workers} worker process(es)")
            rounds.append(run_round(database_url, env, args.events, args.workers))
            log(f"round {round_no}: pgbench, 4 clients, {args.pgbench_seconds} s")
            baselines.append(pgbench(args.pgbench_seconds))
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        Redis.from_url(REDIS_URL).flushdb()

    rate = statistics.median(r["rate"] for r in rounds)
    tps = [b for b in baselines if b]
    baseline = statistics.median(tps) if tps else None
    print(f"\nbacklog {args.events} webhooks, {args.workers} worker process(es), {args.rounds} round(s), "
          f"{os.cpu_count()} CPUs")
    print(f"{'':<28}{'credits/s':>10}{'drain s':>9}{'lag p50 s':>11}{'lag p99 s':>11}{'pgbench tx/s':>14}{'ratio':>8}")
    for n, (r, b) in enumerate(zip(rounds, baselines), start=1):
        ratio = f"{r['rate'] / b:.3f}" if b else "-"
        print(f"{'round ' + str(n):<28}{r['rate']:>10.1f}{r['seconds']:>9.2f}{r['p50']:>11.2f}{r['p99']:>11.2f}"
              f"{(b or 0):>14.0f}{ratio:>8}")
    print(f"{'median':<28}{rate:>10.1f}{'':>9}{'':>11}{'':>11}{(baseline or 0):>14.0f}"
          f"{(f'{rate / baseline:.3f}' if baseline else '-'):>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
