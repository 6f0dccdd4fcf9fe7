"""Benchmark: MoonPay webhook acceptance latency and webhook-to-credit throughput (not a test).

    .venv/bin/python bench/webhooks.py [--requests 1500] [--concurrency 1,4,8] [--pools 1,2,4] [--events 300]

What it does, on a scratch PostgreSQL database and Redis db 13 (both wiped at the end):
1. Acceptance: a real gunicorn (gunicorn.conf.py: gthread, WEB_CONCURRENCY=2 x 4 threads) on a
   loopback port; for each concurrency level, that many sender processes with keep-alive
   connections send signed, distinct `waitingPayment` events back to back (closed loop); the
   latency is what the sender sees. No worker runs, so this is the request path alone: IP check,
   size, signature, parse, INSERT ... ON CONFLICT + COMMIT, RQ enqueue.
2. End to end: for each worker pool size, start that many `rq worker` processes (the project's
   WalletWorker, exactly as bin/start-worker runs it), send E signed `completed` events for E
   distinct purchases spread over 50 wallets, and time from the first request until the last
   wallet is credited. Checks that every purchase was credited exactly once.
Every phase is bounded (fixed counts, timeouts). Prints a table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg2
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VENV_BIN = Path(sys.executable).parent
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
WEBHOOK_SECRET = "wk_bench_webhook_secret"
WALLETS = 50


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(database_url: str, port: int, log_level: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "APP_ENV": "development", "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
        "JWT_SECRET": "bench-jwt-secret-0123456789abcdef-0123456789",
        "JWT_REFRESH_SECRET": "bench-refresh-secret-0123456789abcdef-01234",
        "MOONPAY_WEBHOOK_SECRET": WEBHOOK_SECRET, "MOONPAY_SECRET_KEY": "sk_bench",
        "LOG_LEVEL": log_level, "PORT": str(port), "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4",
        "DB_POOL_SIZE": "8", "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
    })
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


class Scratch:
    """A scratch database made by the migrations, with users, wallets and purchases to credit."""

    def __init__(self):
        self.name = f"wallet_api_bench_{os.getpid()}"
        self.url = PG_ADMIN.rsplit("/", 1)[0] + "/" + self.name

    def __enter__(self):
        conn = psycopg2.connect(PG_ADMIN)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
            cur.execute(f'CREATE DATABASE "{self.name}"')
        conn.close()
        return self

    def __exit__(self, *exc):
        conn = psycopg2.connect(PG_ADMIN)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        conn.close()

    def app(self, env):
        from wallet_api import create_app
        from wallet_api.config import load_settings

        return create_app(load_settings(env))

    def migrate_and_seed(self, env) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Run the migrations; make WALLETS users with an ETH wallet each; return (user, wallet) pairs."""
        from flask_migrate import upgrade

        from wallet_api.extensions import db
        from wallet_api.wallets import service as wallet_service

        app = self.app(env)
        with app.app_context():
            upgrade()
            pairs = []
            for i in range(WALLETS):
                user_id = uuid.uuid4()
                db.session.execute(db.text("INSERT INTO users (id, email, password_hash, role) "
                                           "VALUES (:i, :e, 'x', 'USER')"),
                                   {"i": user_id, "e": f"bench-{i}-{user_id.hex[:6]}@example.com"})
                db.session.commit()
                pairs.append((user_id, wallet_service.create_wallet(user_id=user_id, currency="ETH").id))
            db.session.remove()
        return pairs

    def purchases(self, env, pairs, count: int) -> list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]:
        """`count` pending on-ramp sessions (through the session service): (onramp id, user id, wallet id)."""
        from wallet_api.extensions import db
        from wallet_api.onramp import service

        app = self.app(env)
        made = []
        with app.app_context():
            for i in range(count):
                user_id, wallet_id = pairs[i % len(pairs)]
                session = service.create_session(user_id=user_id, wallet_id=wallet_id, base_currency="usd",
                                                 base_amount=Decimal("100"))
                made.append((session.transaction.id, user_id, wallet_id))
            db.session.remove()
        return made

    def scalar(self, sql: str, **params):
        conn = psycopg2.connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchone()[0]
        finally:
            conn.close()


def webhook(onramp_id, user_id, *, status: str, n: int) -> bytes:
    amount = "0.000123456789012345" if status == "completed" else "0.1"
    return (
        '{"type":"transaction_updated","data":{"id":"mp_bench_%s","status":"%s","updatedAt":"2026-11-28T10:%02d:%02dZ",'
        '"externalTransactionId":"%s","externalCustomerId":"%s","quoteCurrencyAmount":%s,'
        '"baseCurrencyAmount":100,"currency":{"code":"eth"},"baseCurrency":{"code":"usd"},'
        '"cryptoTransactionId":"0x%s"}}' % (onramp_id.hex, status, (n // 60) % 60, n % 60, onramp_id, user_id,
                                             amount, onramp_id.hex)
    ).encode()


def _client(port: int, chunk: list[tuple[bytes, str]], start_at: float, out) -> None:
    """One sender process: a keep-alive HTTP/1.1 connection, one request at a time."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.connect()
    # http.client writes headers and body separately: without NODELAY, Nagle holds the body until
    # the server's delayed ACK (tens of ms) and the benchmark would measure TCP, not the app.
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    timings = []
    time.sleep(max(0.0, start_at - time.time()))
    for body, header in chunk:
        started = time.perf_counter()
        connection.request("POST", "/webhooks/moonpay", body=body,
                           headers={"Moonpay-Signature-V2": header, "Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        timings.append(time.perf_counter() - started)
        if response.status != 200:
            out.put(RuntimeError(f"webhook answered {response.status}"))
            return
    connection.close()
    out.put(timings)


def send_all(port: int, bodies: list[bytes], senders: int) -> list[float]:
    """POST every body from `senders` concurrent client processes; return latencies in seconds.

    Processes, not threads, so the load generator's own GIL does not queue requests; a plain
    http.client keep-alive connection per sender keeps the client's cost out of the numbers.
    """
    import multiprocessing

    from wallet_api.onramp.signature import sign_webhook

    now = int(time.time())
    signed = [(body, sign_webhook(body=body, secret=WEBHOOK_SECRET, timestamp=now)) for body in bodies]
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    start_at = time.time() + 0.5
    processes = [context.Process(target=_client, args=(port, signed[i::senders], start_at, out))
                 for i in range(senders)]
    for process in processes:
        process.start()
    results = [out.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=10)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return [t for timings in results for t in timings]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def start_gunicorn(env, port: int) -> subprocess.Popen:
    process = subprocess.Popen([str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
                                "wsgi:app"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("gunicorn did not start")


def start_workers(env, count: int) -> list[subprocess.Popen]:
    from wallet_api.queues import QUEUE_NAMES

    command = [str(VENV_BIN / "rq"), "worker", "--worker-class", "worker.runner.WalletWorker", "--with-scheduler",
               "--url", REDIS_URL, "--quiet", *QUEUE_NAMES]
    workers = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True) for _ in range(count)]
    from rq import Worker

    connection = Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sum(w.get_state() == "idle" for w in Worker.all(connection=connection)) >= count:
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
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="webhooks per acceptance run")
    parser.add_argument("--concurrency", default="1,4,8", help="concurrent senders per acceptance run")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders in the end-to-end runs")
    parser.add_argument("--pools", default="1,2,4", help="worker pool sizes for the end-to-end phase")
    parser.add_argument("--events", type=int, default=300, help="completed purchases per end-to-end run")
    parser.add_argument("--log-level", default="WARNING", help="app log level (INFO adds ~3 log lines/request)")
    args = parser.parse_args()
    pools = [int(p) for p in args.pools.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if not shutil.which("gunicorn", path=str(VENV_BIN)):
        log("gunicorn not found next to this Python")
        return 1

    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    rows = []
    with Scratch() as scratch:
        port = free_port()
        env = environment(scratch.url, port, args.log_level)
        log(f"seeding {scratch.name} ...")
        pairs = scratch.migrate_and_seed(env)
        accept = scratch.purchases(env, pairs, 50 + args.requests * len(concurrency))
        web = start_gunicorn(env, port)
        try:
            # Warm-up: every gunicorn worker opens its pools.
            send_all(port, [webhook(o, u, status="pending", n=99999) for o, u, _ in accept[:50]], 4)
            sent = 50
            for senders in concurrency:
                batch = accept[sent:sent + args.requests]
                log(f"acceptance: {len(batch)} signed webhooks from {senders} concurrent senders ...")
                bodies = [webhook(o, u, status="waitingPayment", n=i) for i, (o, u, _) in enumerate(batch)]
                started = time.perf_counter()
                timings = send_all(port, bodies, senders)
                elapsed = time.perf_counter() - started
                sent += len(batch)
                stored = scratch.scalar("SELECT count(*) FROM webhook_events")
                assert stored == sent, (stored, sent)
                rows.append(("acceptance (no workers)", f"{len(timings)} req, {senders} senders",
                             f"{percentile(timings, 50) * 1000:.1f}", f"{percentile(timings, 99) * 1000:.1f}",
                             f"{len(timings) / elapsed:.0f} req/s", "-"))
                redis.flushdb()

            for pool in pools:
                purchases = scratch.purchases(env, pairs, args.events)
                log(f"end to end: {args.events} completed purchases, {pool} worker process(es) ...")
                workers = start_workers(env, pool)
                try:
                    first = scratch.scalar("SELECT coalesce(max(id), 0) FROM ledger_entries")
                    bodies = [webhook(o, u, status="completed", n=i) for i, (o, u, _) in enumerate(purchases)]
                    started = time.perf_counter()
                    timings = send_all(port, bodies, args.senders)
                    ids = [str(o) for o, _, _ in purchases]
                    deadline = time.monotonic() + 240
                    done = 0
                    while time.monotonic() < deadline:
                        done = scratch.scalar("SELECT count(*) FROM onramp_transactions WHERE status = 'completed' "
                                              "AND id = ANY(%(ids)s::uuid[])", ids=ids)
                        if done == len(ids):
                            break
                        time.sleep(0.05)
                    elapsed = time.perf_counter() - started
                finally:
                    stop(workers)
                credits = scratch.scalar("SELECT count(*) FROM ledger_entries e JOIN wallets w ON w.id = e.wallet_id "
                                         "WHERE w.user_id IS NOT NULL AND e.id > %(first)s", first=first)
                lag = scratch.scalar("""SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY
                                            extract(epoch FROM processed_at - received_at))
                                        FROM webhook_events WHERE status = 'processed' AND outcome = 'credited'
                                        AND payload LIKE '%%"completed"%%'""")
                if done != len(ids) or credits != len(ids):
                    raise RuntimeError(f"{done} completed and {credits} credits for {len(ids)} purchases")
                rows.append((f"end to end, {pool} worker(s)", f"{len(ids)} credits, {args.senders} senders",
                             f"{percentile(timings, 50) * 1000:.1f}", f"{percentile(timings, 99) * 1000:.1f}",
                             f"{len(ids) / elapsed:.0f} credits/s", f"{float(lag) * 1000:.0f} ms"))
                redis.flushdb()
        finally:
            stop([web])
            redis.flushdb()

    headers = ("phase", "load", "accept p50 ms", "accept p99 ms", "throughput", "credit lag p50")
    widths = [max(len(str(r[i])) for r in (headers, *rows)) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(f"\ngunicorn gthread 2 workers x 4 threads; app log level {args.log_level}; "
          f"{os.cpu_count()} CPUs; every purchase credited exactly once (checked).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
