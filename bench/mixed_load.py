"""Mixed load: many users reading wallets, moving money, paging ledgers and starting on-ramp purchases
while MoonPay's signed webhooks for those purchases arrive and the workers credit them (not a test;
tests/bench runs a short one).

    .venv/bin/python bench/mixed_load.py [--users 40] [--seconds 30] [--rate R] [--webhook-rate W]
                                         [--saturation-clients 16] [--json PATH] [--no-baseline] [--keep]

1. The platform, as bench/chaos.py starts it (and only what it starts): a scratch database made by the
   migrations through bin/release, a private redis-server, bin/start-web (gunicorn as shipped),
   --workers worker dynos of --worker-processes each (bin/start-worker) and bin/start-scheduler; in
   production mode (JSON logs at INFO, the webhook IP allowlist, the HTTPS rule) behind a pretend router:
   TRUSTED_PROXY_COUNT=1 and every request carries X-Forwarded-Proto: https and X-Forwarded-For (a
   user's own address, 127.0.0.1 for MoonPay). Rate limits stay on, raised by their RATELIMIT_* variables.
2. Users register, log in and open an ETH and a BTC wallet through the API; on-ramp sessions are started
   for the webhooks to come.
3. Funding, which measures the worker pool: a burst of --funding signed `completed` webhooks, sent as
   fast as 8 senders can; every purchase credits 0.01 ETH. The pool's capacity is the burst over the
   time from its first receipt to its last credit (--worker-capacity skips the measure, not the funds).
4. Saturation (unless --rate is given): the request mix in a closed loop from --saturation-clients
   connections for --saturation-seconds, webhooks arriving meanwhile; its throughput is the saturation.
5. The measured run: the same mix in an open loop, at a fixed arrival rate of --load-factor (0.5) times
   the saturation for --seconds, while completed webhooks arrive at a fixed rate of --webhook-rate
   (default half the pool's capacity). Latency counts from each request's scheduled time, so a server
   that falls behind shows it instead of slowing the clients down.
6. Waits (bounded) for every webhook to be credited, then checks in SQL: every completed purchase
   credited exactly once with its amount to its wallet, nothing credited for a purchase MoonPay did not
   complete, every event processed, cached balances equal to their entries, every ledger transaction
   summing to zero, unbroken balance_after chains, no negative balance, as much ETH in user wallets
   as was bought, and every acknowledged transfer in the ledger once.

The mix (--mix): GET /wallets, GET /wallets/<id>, GET /wallets/<id>/ledger?limit=20, POST /transfers
(0.000001 ETH to another user) and POST /onramp/sessions (an ETH purchase whose completion joins the
webhook queue). Prints req/s and latency p50/p95/p99 per endpoint, errors by status, the
webhook-to-credit latency (the event's received_at to its credit's created_at), where the time of each
endpoint went (matched by X-Request-ID to the app's request log lines: the load generator's delay, on the way
in to the app, in the app, on the way back; see stages()), the goals, the machine's load; --json PATH writes
all of it. Exit status 1 on any violated invariant.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import math
import multiprocessing
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import chaos  # noqa: E402 - after the path set-up, like the other benchmarks
from bench.request_path import (DEFAULT_BASELINE, LIMITED, RAISED_LIMIT, TICK, _stat as proc_stat,  # noqa: E402
                                cpu_pressure, run_baseline, server_cpu_seconds)
from bench.webhooks import webhook as completed_webhook  # noqa: E402
from wallet_api.onramp.signature import sign_webhook  # noqa: E402

MIX = {"wallets": 25, "wallet": 20, "ledger": 20, "transfer": 25, "session": 10}
EXPECTED = {"wallets": 200, "wallet": 200, "ledger": 200, "transfer": 201, "session": 201, "webhook": 200}
READS = ("wallets", "wallet", "ledger")
STAGES = ("queued", "to_app", "app", "from_app")  # of a request's time: see stages()
PURCHASE = Decimal("0.01")          # what bench/webhooks.py's completed webhook credits
TRANSFER = "0.000001"
BASE_AMOUNT = "10.00"                # the session's fiat amount, as that webhook states it
PASSWORD = "mixed load passphrase 0123"
GOAL_MS = 50.0                       # p99 of reads and transfers at half the saturation
GOAL_CREDIT_S = 1.0                  # p99 webhook-to-credit at half the pool's capacity
WARMUP = 2.0
WEBHOOK_SENDERS = 8
IDLE_SECONDS = 3.0                   # under gunicorn's keepalive
BASELINE_SECONDS = 5


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Options:
    users: int = 40
    workers: int = 1                 # worker dynos
    worker_processes: int = 2        # WORKER_PROCESSES of each
    web_concurrency: int = 2         # gunicorn workers, as shipped
    funding: int = 300               # completed webhooks of the funding burst
    worker_capacity: float | None = None   # credits/s; measured by the funding burst when None
    rate: float | None = None        # requests/s of the measured run; half the saturation when None
    load_factor: float = 0.5
    webhook_rate: float | None = None      # webhooks/s of the measured run; half the capacity when None
    saturation_clients: int = 16
    saturation_seconds: float = 10.0
    seconds: float = 30.0
    client_processes: int = 2
    open_threads: int = 32           # connections per client process in the open loop
    mix: dict = field(default_factory=lambda: dict(MIX))
    baseline: Path | None = DEFAULT_BASELINE
    baseline_clients: int = 16
    drain_timeout: float = 120.0
    seed: int = 1
    keep: bool = False
    pg_admin_url: str = chaos.PG_ADMIN
    log_dir: Path | None = None
    verbose: bool = True


# --------------------------------------------------------------------------- the platform


def platform_settings(secret: str, metrics_dir: Path) -> dict[str, str]:
    """Production, behind one trusted proxy, rate limits on but out of the way of the load."""
    return {
        "APP_ENV": "production", "LOG_LEVEL": "INFO", "LOG_JSON": "true",
        # The scratch server listens on loopback without TLS.
        "DATABASE_TLS_REQUIRED": "false",
        "TRUSTED_PROXY_COUNT": "1", "WEBHOOK_ALLOWED_IPS": "127.0.0.1",
        "CORS_ALLOWED_ORIGINS": "https://app.bench.invalid",
        "JWT_SECRET": secrets.token_urlsafe(48), "JWT_REFRESH_SECRET": secrets.token_urlsafe(48),
        "MOONPAY_WEBHOOK_SECRET": secret, "MOONPAY_SECRET_KEY": "sk_" + secrets.token_urlsafe(32),
        # Tokens are minted once, before runs that may outlast the usual 15 minutes.
        "ACCESS_TOKEN_TTL_SECONDS": "86400",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        # The pool as shipped: the chaos run's smaller one (2) is below gunicorn's 4 threads, so a third
        # concurrent request in a process would open, and close, a connection of its own.
        "DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "5",
        "RATELIMIT_ENABLED": "true",
        **{f"RATELIMIT_{name}": RAISED_LIMIT for name in LIMITED},
    }


def chaos_options(options: Options) -> chaos.Options:
    """The platform's shape, with production's webhook retry settings (nothing here is meant to fail)."""
    return chaos.Options(workers=options.workers, worker_processes=options.worker_processes,
                         web_concurrency=options.web_concurrency, stale_after=600, retry_interval=300,
                         retry_backoff=(60, 300, 900, 1800, 3600), max_retries=5, pg_admin_url=options.pg_admin_url)


# --------------------------------------------------------------------------- HTTP


@dataclass
class User:
    email: str
    address: str                     # its X-Forwarded-For
    id: str = ""
    token: str = ""
    eth: str = ""
    btc: str = ""


class Connection:
    """One keep-alive HTTP/1.1 connection to gunicorn, as the router would hold it."""

    def __init__(self, port: int):
        self.port = port
        self.http: http.client.HTTPConnection | None = None
        self.used = 0.0

    def send(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes]:
        """(status, body); status 0 when the connection failed."""
        # gunicorn closes a connection idle for its keepalive (5 s); a request sent on it as it closes
        # would fail. A router opens a new one instead, and so does this client.
        if self.http is not None and time.monotonic() - self.used > IDLE_SECONDS:
            self.close()
        self.used = time.monotonic()
        try:
            if self.http is None:
                self.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.http.connect()
                # http.client sends headers and body separately: without NODELAY, Nagle holds the body.
                self.http.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.http.request(method, path, body=body, headers=headers)
            response = self.http.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, b""

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None


def proxied(address: str) -> dict[str, str]:
    return {"X-Forwarded-Proto": "https", "X-Forwarded-For": address}


def call(connection: Connection, method: str, path: str, expect: int, user: User, **body) -> dict:
    headers = {**proxied(user.address), "Content-Type": "application/json"}
    if user.token:
        headers["Authorization"] = f"Bearer {user.token}"
    status, raw = connection.send(method, path, json.dumps(body).encode() if body else None, headers)
    if status != expect:
        raise RuntimeError(f"{method} {path}: {status} {raw[:300]!r}")
    return json.loads(raw)


def create_users(port: int, count: int, tag: str) -> list[User]:
    users = [User(email=f"load-{tag}-{n}@example.com", address=f"10.{n // 250}.{n % 250}.7") for n in range(count)]

    def make(user: User) -> None:
        connection = Connection(port)
        user.id = call(connection, "POST", "/auth/register", 201, user, email=user.email, password=PASSWORD)["id"]
        user.token = call(connection, "POST", "/auth/login", 200, user, email=user.email,
                          password=PASSWORD)["access_token"]
        user.eth = call(connection, "POST", "/wallets", 201, user, currency="ETH")["id"]
        user.btc = call(connection, "POST", "/wallets", 201, user, currency="BTC")["id"]
        connection.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(make, users))
    return users


def create_sessions(port: int, users: list[User], count: int, rng: random.Random) -> list[tuple[str, str]]:
    """`count` ETH purchases started through the API: (on-ramp id, user id)."""
    owners = [rng.choice(users) for _ in range(count)]
    local = threading.local()

    def start(user: User) -> tuple[str, str]:
        connection = local.__dict__.setdefault("connection", Connection(port))
        made = call(connection, "POST", "/onramp/sessions", 201, user, wallet_id=user.eth, base_currency="usd",
                    base_amount=BASE_AMOUNT)
        return made["id"], user.id

    with ThreadPoolExecutor(8) as pool:  # gunicorn's 2 x 4 threads
        return list(pool.map(start, owners))


def webhook_request(secret: str, onramp_id: str, user_id: str, n: int) -> tuple[str, bytes, dict]:
    """MoonPay's signed `completed` webhook for a purchase: (MoonPay id, body, headers)."""
    body = completed_webhook(uuid.UUID(onramp_id), uuid.UUID(user_id), n)
    headers = {**proxied("127.0.0.1"), "Content-Type": "application/json",
               "Moonpay-Signature-V2": sign_webhook(body=body, secret=secret, timestamp=int(time.time()))}
    return json.loads(body)["data"]["id"], body, headers


# --------------------------------------------------------------------------- the load


@dataclass
class Phase:
    """What to drive: an open loop at `rate` requests/s, or a closed loop of `clients` connections."""

    name: str
    seconds: float
    rate: float | None = None
    clients: int | None = None
    webhook_rate: float = 0.0


def request_for(kind: str, user: User, users: list[User], rng: random.Random) -> tuple[str, str, bytes | None, dict]:
    headers = {**proxied(user.address), "Authorization": f"Bearer {user.token}"}
    if kind == "wallets":
        return "GET", "/wallets", None, headers
    wallet = user.eth if rng.random() < 0.5 else user.btc
    if kind == "wallet":
        return "GET", f"/wallets/{wallet}", None, headers
    if kind == "ledger":
        return "GET", f"/wallets/{wallet}/ledger?limit=20", None, headers
    headers["Content-Type"] = "application/json"
    if kind == "transfer":
        other = rng.choice(users)
        while other is user and len(users) > 1:
            other = rng.choice(users)
        body = {"from_wallet_id": user.eth, "to_wallet_id": other.eth, "amount": TRANSFER}
    else:
        body = {"wallet_id": user.eth, "base_currency": "usd", "base_amount": BASE_AMOUNT}
    return "POST", "/transfers" if kind == "transfer" else "/onramp/sessions", json.dumps(body).encode(), headers


def as_child() -> None:
    """A load process ends when the run does (it is a daemon): not on Ctrl-C, and SIGTERM just ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def client_main(port: int, phase: Phase, share: float, users: list[User], mix: dict, threads: int, seed: int,
                measure_from: float, until: float, sessions, out) -> None:
    """One client process: its share of an open loop (a dispatcher and `threads` connections) or
    `threads` closed-loop connections. Sends (kind, latency ms, status) of the measured window and the
    transfers of the whole phase (warm-up included) answered 201 and not answered at all; the purchases
    it started go to `sessions`."""
    as_child()
    rng = random.Random(seed)
    kinds, weights = list(mix), list(mix.values())
    results: list[tuple[str, float, int]] = []
    timings: list[tuple[str, str, float, float, float]] = []  # request id, kind, scheduled, sent, answered
    transfers = Counter()
    lock = threading.Lock()

    def one(connection: Connection, kind: str, user: User, scheduled: float) -> None:
        method, path, body, headers = request_for(kind, user, users, rng)
        request_id = uuid.uuid4().hex  # the app logs it: stages() finds this request's time in the app
        sent = time.time()
        status, raw = connection.send(method, path, body, {**headers, "X-Request-ID": request_id})
        done = time.time()
        if kind == "session" and status == 201:
            sessions.put((json.loads(raw)["id"], user.id))
        with lock:
            if kind == "transfer":
                transfers[status] += 1
            if scheduled >= measure_from:
                results.append((kind, (done - scheduled) * 1000, status))
                timings.append((request_id, kind, scheduled, sent, done))

    def closed() -> None:
        connection = Connection(port)
        while (now := time.time()) < until:
            one(connection, rng.choices(kinds, weights)[0], rng.choice(users), now)
        connection.close()

    if phase.rate is None:
        pool = [threading.Thread(target=closed, daemon=True) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=60)
    else:
        open_loop(port, phase.rate * share, measure_from - WARMUP, until, threads,
                  lambda: (rng.choices(kinds, weights)[0], rng.choice(users)),
                  lambda connection, scheduled, item: one(connection, *item, scheduled))
    out.put(("clients", results, transfers[201], transfers[0], timings))


def open_loop(port: int, rate: float, start: float, until: float, threads: int, arrival, handle) -> None:
    """Arrivals at fixed times from `start` to `until`, whatever the server does (a late answer is late,
    never a request not sent): `arrival()` makes each one (None: nothing to send), and one of `threads`
    threads, each with its own connection, runs `handle(connection, scheduled time, item)`. Returns once
    every arrival is handled."""
    work: queue.SimpleQueue = queue.SimpleQueue()

    def serve() -> None:
        connection = Connection(port)
        while (job := work.get()) is not None:
            handle(connection, *job)
        connection.close()

    pool = [threading.Thread(target=serve, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    n = 0
    while (scheduled := start + n / rate) < until:
        delay = scheduled - time.time()
        if delay > 0:
            time.sleep(delay)
        n += 1
        if (item := arrival()) is not None:
            work.put((scheduled, item))
    for _ in pool:
        work.put(None)
    for thread in pool:
        thread.join(timeout=60)


def webhook_main(port: int, rate: float, secret: str, backlog: list, sessions, measure_from: float, until: float,
                 first: int, out) -> None:
    """MoonPay: completed webhooks at a fixed rate, for the purchases started in this phase first (as they
    come) and the ones started before it otherwise; like MoonPay, a sender tries again until it gets a 200
    (the latency and status are the first attempt's). Sends the MoonPay ids delivered, each with whether
    it was in the measured window, the latencies, how many of `backlog` it used and how many arrivals
    found no purchase to complete."""
    as_child()
    sent: list[tuple[str, bool]] = []
    results: list[tuple[str, float, int]] = []
    lock = threading.Lock()
    counts = Counter()

    def arrival() -> tuple[str, str, int] | None:
        counts["arrivals"] += 1
        try:
            onramp_id, user_id = sessions.get_nowait()
        except queue.Empty:
            if counts["used"] >= len(backlog):
                counts["starved"] += 1
                return None
            onramp_id, user_id = backlog[counts["used"]]
            counts["used"] += 1
        return onramp_id, user_id, first + counts["arrivals"]

    def deliver(connection: Connection, scheduled: float, purchase: tuple[str, str, int]) -> None:
        moonpay_id, body, headers = webhook_request(secret, *purchase)
        status, _ = connection.send("POST", "/webhooks/moonpay", body, headers)
        if scheduled >= measure_from:
            with lock:
                results.append(("webhook", (time.time() - scheduled) * 1000, status))
        attempts = 1
        while status != 200 and attempts < 20:
            time.sleep(0.25)
            _, body, headers = webhook_request(secret, *purchase)  # signed afresh
            status, _ = connection.send("POST", "/webhooks/moonpay", body, headers)
            attempts += 1
        if status == 200:
            with lock:
                sent.append((moonpay_id, scheduled >= measure_from))

    open_loop(port, rate, measure_from - WARMUP, until, WEBHOOK_SENDERS, arrival, deliver)
    out.put(("webhooks", sent, results, counts["used"], counts["starved"]))


@dataclass
class Stats:
    count: int
    rate: float
    p50: float
    p95: float
    p99: float
    max: float
    errors: dict


@dataclass
class PhaseResult:
    name: str
    mode: str
    seconds: float
    offered_rate: float | None
    webhook_rate: float
    endpoints: dict = field(default_factory=dict)       # kind -> Stats
    throughput: float = 0.0                              # requests/s of the mix (webhooks apart)
    webhooks: list = field(default_factory=list)         # MoonPay ids whose scheduled time was measured
    webhook_starved: int = 0
    credit_latency: dict | None = None                   # seconds: p50, p95, p99, max, count
    stages: dict = field(default_factory=dict)           # kind -> where its time went: see stages()
    load: str = ""
    cpu: dict = field(default_factory=dict)              # cores used on average: see cpu_share


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (every core, every process), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK


def backend_seconds(database: chaos.ScratchDatabase) -> dict[int, float]:
    """CPU seconds of each live PostgreSQL backend connected to the scratch database (same host)."""
    found = {}
    for (pid,) in database.rows("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            found[pid] = sum(int(v) for v in proc_stat(pid)[11:13]) / TICK
    return found


def cpu_snapshot(platform: chaos.Platform) -> dict:
    """CPU seconds so far: the machine, gunicorn, the worker dynos, this process's reaped children (the
    load generator's processes once joined), the scratch database's backends."""
    children = os.times()
    return {"machine": machine_busy_seconds(), "web": server_cpu_seconds(platform.web.pid),
            "workers": sum(server_cpu_seconds(dyno.pid) for dyno in platform.dynos if dyno is not None),
            "clients": children.children_user + children.children_system,
            "backends": backend_seconds(platform.database), "jobs": rq_jobs_run(platform.redis.url),
            "wall": time.monotonic()}


def rq_jobs_run(redis_url: str) -> int:
    """Jobs the live RQ workers have finished so far (RQ's own counters in each worker's hash)."""
    from redis import Redis

    redis = Redis.from_url(redis_url)
    total = 0
    for key in redis.smembers("rq:workers"):
        done, failed = redis.hmget(key, "successful_job_count", "failed_job_count")
        total += int(done or 0) + int(failed or 0)
    redis.close()
    return total


def cpu_share(before: dict, after: dict) -> dict[str, float]:
    """Cores used on average between two snapshots, by whom. `postgres` counts the backends alive at the
    end (one that exited meanwhile is missed); `rest` is everything else on the machine."""
    wall = after["wall"] - before["wall"]
    used = {k: (after[k] - before[k]) / wall for k in ("machine", "web", "workers", "clients")}
    used["postgres"] = sum(t - before["backends"].get(pid, 0.0) for pid, t in after["backends"].items()) / wall
    used["rest"] = used["machine"] - used["web"] - used["workers"] - used["clients"] - used["postgres"]
    used["jobs"] = after["jobs"] - before["jobs"]  # a count, not cores
    return used


def drive(platform: chaos.Platform, phase: Phase, users: list[User], options: Options, secret: str,
          backlog: list, serial: int) -> tuple[PhaseResult, list[str], int, tuple[int, int]]:
    """Run one phase; returns its result, every MoonPay id delivered, how many of `backlog` it used and
    the transfers of the whole phase (answered 201, not answered)."""
    port = platform.port
    context = multiprocessing.get_context("fork")
    out, sessions = context.Queue(), context.Queue()
    measure_from = time.time() + 1.0 + WARMUP    # a second to start the processes
    until = measure_from + phase.seconds
    clients = options.client_processes
    if phase.rate is None:
        per = [phase.clients // clients + (n < phase.clients % clients) for n in range(clients)]
    else:
        per = [options.open_threads] * clients
    # Daemons: if this process is stopped, they stop with it instead of loading a platform that is gone.
    processes = [context.Process(target=client_main, daemon=True, args=(
        port, phase, 1.0 / clients, users, options.mix, per[n], options.seed * 1000 + serial * 10 + n,
        measure_from, until, sessions, out)) for n in range(clients) if per[n]]
    if phase.webhook_rate > 0:
        processes.append(context.Process(target=webhook_main, daemon=True, args=(
            port, phase.webhook_rate, secret, backlog, sessions, measure_from, until, serial * 1_000_000, out)))
    cpu_before = cpu_snapshot(platform)
    for process in processes:
        process.start()
    collected = [out.get(timeout=phase.seconds + WARMUP + 180) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    cpu = cpu_share(cpu_before, cpu_snapshot(platform))
    rows: list[tuple[str, float, int]] = []
    timings: list[tuple[str, str, float, float, float]] = []
    sent, used, starved, acked, unanswered = [], 0, 0, 0, 0
    for item in collected:
        if item[0] == "webhooks":
            _, sent, hook_rows, used, starved = item
            rows += hook_rows
        else:
            _, client_rows, ok, lost, client_timings = item
            rows += client_rows
            timings += client_timings
            acked, unanswered = acked + ok, unanswered + lost
    result = PhaseResult(name=phase.name, mode="closed" if phase.rate is None else "open", seconds=phase.seconds,
                         offered_rate=phase.rate, webhook_rate=phase.webhook_rate, webhook_starved=starved,
                         webhooks=[moonpay_id for moonpay_id, measured in sent if measured],
                         load=f"load average {os.getloadavg()[0]:.1f}{cpu_pressure()}", cpu=cpu)
    by_kind: dict[str, list] = {}
    for kind, latency, status in rows:
        by_kind.setdefault(kind, []).append((latency, status))
    for kind in [*options.mix, "webhook"]:
        found = by_kind.get(kind, [])
        if not found:
            continue
        latencies = [latency for latency, _ in found]
        errors = Counter(str(status) for _, status in found if status != EXPECTED[kind])
        result.endpoints[kind] = Stats(count=len(found), rate=len(found) / phase.seconds,
                                       p50=quantile(latencies, 0.5), p95=quantile(latencies, 0.95),
                                       p99=quantile(latencies, 0.99), max=max(latencies), errors=dict(errors))
    result.throughput = sum(s.count for k, s in result.endpoints.items() if k != "webhook") / phase.seconds
    result.stages = stages(timings, platform.processes.log_dir / "web.log")
    return result, [moonpay_id for moonpay_id, _ in sent], used, (acked, unanswered)


def stages(timings: list[tuple[str, str, float, float, float]], web_log: Path) -> dict:
    """Where each endpoint's time went, matching the requests to the app's `request` log lines by request id:
    `queued` from the scheduled time to the send (the load generator's own delay), `to_app` from the send to
    the start of the app's handling (the network, gunicorn's queue and parsing), `app` the app's
    `duration_ms`, `from_app` from the app's log line to the answer (the app's last after-request steps,
    the session's cleanup, gunicorn's write, the client's read). Per kind: p50 and p99 of each, and their
    means over the slowest 1% of requests (what the p99 is made of)."""
    in_app: dict[str, tuple[float, float]] = {}  # request id -> (app start, app end), epoch seconds
    with contextlib.suppress(FileNotFoundError), open(web_log, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if '"event": "request"' not in line:
                continue
            try:
                event = json.loads(line)
                end = dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
                in_app[event["request_id"]] = (end - event["duration_ms"] / 1000, end)
            except (ValueError, KeyError, TypeError):
                continue
    by_kind: dict[str, list[dict]] = {}
    for request_id, kind, scheduled, sent, done in timings:
        if request_id in in_app:
            start, end = in_app[request_id]
            by_kind.setdefault(kind, []).append({
                "total": (done - scheduled) * 1000, "queued": (sent - scheduled) * 1000,
                "to_app": (start - sent) * 1000, "app": (end - start) * 1000, "from_app": (done - end) * 1000})
    result = {}
    for kind, found in by_kind.items():
        slowest = sorted(found, key=lambda r: r["total"])[-max(1, len(found) // 100):]
        result[kind] = {"matched": len(found), **{
            part: {"p50": quantile([r[part] for r in found], 0.5), "p99": quantile([r[part] for r in found], 0.99),
                   "slowest_1pct": statistics.fmean(r[part] for r in slowest)}
            for part in STAGES}}
    return result


# --------------------------------------------------------------------------- the worker pool


def fund(port: int, secret: str, purchases: list[tuple[str, str]], database: chaos.ScratchDatabase,
         timeout: float) -> tuple[list[str], float]:
    """The funding burst: every purchase's completion as fast as 8 senders go; (MoonPay ids, credits/s)."""
    local = threading.local()

    def send(item) -> str:
        n, (onramp_id, user_id) = item
        connection = local.__dict__.setdefault("connection", Connection(port))
        moonpay_id, body, headers = webhook_request(secret, onramp_id, user_id, n)
        status, raw = connection.send("POST", "/webhooks/moonpay", body, headers)
        if status != 200:
            raise RuntimeError(f"funding webhook refused: {status} {raw[:200]!r}")
        return moonpay_id

    with ThreadPoolExecutor(WEBHOOK_SENDERS) as pool:
        ids = list(pool.map(send, enumerate(purchases)))
    if not wait_for_credits(database, ids, timeout):
        raise RuntimeError(f"the funding burst was not credited within {timeout:.0f} s")
    ((first, last),) = database.rows(
        "SELECT extract(epoch FROM min(e.received_at)), extract(epoch FROM max(t.created_at)) FROM webhook_events e "
        "JOIN ledger_transactions t ON t.reference = 'moonpay:' || e.external_id AND t.kind = 'onramp_credit' "
        "WHERE e.external_id = ANY(%s)", (ids,))
    return ids, len(ids) / max(1e-3, float(last) - float(first))


def wait_for_credits(database: chaos.ScratchDatabase, moonpay_ids: list[str], timeout: float) -> bool:
    """True once every one of these purchases is credited and every stored event is final."""
    deadline = time.monotonic() + timeout
    while True:
        ((credited,),) = database.rows(
            "SELECT count(*) FROM ledger_transactions WHERE kind = 'onramp_credit' AND reference = ANY(%s)",
            ([f"moonpay:{m}" for m in moonpay_ids],))
        ((unfinished,),) = database.rows(
            "SELECT count(*) FROM webhook_events WHERE status NOT IN ('processed', 'dead_lettered')")
        if credited >= len(set(moonpay_ids)) and not unfinished:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


def credit_latency(database: chaos.ScratchDatabase, moonpay_ids: list[str]) -> dict | None:
    """Seconds from each event's receipt to its credit's created_at."""
    if not moonpay_ids:
        return None
    lags = [float(lag) for (lag,) in database.rows(
        "SELECT extract(epoch FROM t.created_at - e.received_at) FROM webhook_events e "
        "JOIN ledger_transactions t ON t.reference = 'moonpay:' || e.external_id AND t.kind = 'onramp_credit' "
        "WHERE e.external_id = ANY(%s)", (moonpay_ids,))]
    return {"count": len(lags), "p50": quantile(lags, 0.5), "p95": quantile(lags, 0.95), "p99": quantile(lags, 0.99),
            "max": max(lags, default=float("nan"))}


# --------------------------------------------------------------------------- the invariants


def check(database: chaos.ScratchDatabase, completed: list[str], transfers_acked: int,
          transfers_unknown: int) -> list[str]:
    """Every promise about the money, in SQL; one line per broken one."""
    v: list[str] = []
    credits = {ref: (int(n), amount) for ref, n, amount in database.rows(
        "SELECT t.reference, count(DISTINCT t.id), sum(e.amount) FROM ledger_transactions t "
        "JOIN ledger_entries e ON e.transaction_id = t.id JOIN wallets w ON w.id = e.wallet_id "
        "WHERE t.kind = 'onramp_credit' AND w.user_id IS NOT NULL GROUP BY t.reference")}
    for moonpay_id in set(completed):
        found = credits.pop(f"moonpay:{moonpay_id}", None)
        if found is None:
            v.append(f"{moonpay_id} completed but never credited")
        elif found != (1, PURCHASE):
            v.append(f"{moonpay_id} credited {found[0]} times, {found[1]} in all (expected once, {PURCHASE})")
    v += [f"a credit nobody completed: {ref} {found}" for ref, found in credits.items()]
    ((misplaced,),) = database.rows(
        "SELECT count(*) FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id "
        "JOIN wallets w ON w.id = e.wallet_id AND w.user_id IS NOT NULL "
        "JOIN onramp_transactions o ON t.reference = 'moonpay:' || o.moonpay_transaction_id "
        "WHERE t.kind = 'onramp_credit' AND e.wallet_id <> o.wallet_id")
    if misplaced:
        v.append(f"{misplaced} credits landed in a wallet other than their purchase's")
    ((wrong_status,),) = database.rows(
        "SELECT count(*) FROM onramp_transactions WHERE (status = 'completed') <> (moonpay_transaction_id = ANY(%s))",
        (list(set(completed)),))
    if wrong_status:
        v.append(f"{wrong_status} purchases whose status disagrees with what MoonPay said")
    for status, n in database.rows("SELECT status, count(*) FROM webhook_events WHERE status <> 'processed' "
                                   "GROUP BY status"):
        v.append(f"{n} webhook events {status}")
    ((drifted,),) = database.rows(
        "SELECT count(*) FROM wallets w WHERE user_id IS NOT NULL AND balance <> "
        "(SELECT coalesce(sum(amount), 0) FROM ledger_entries e WHERE e.wallet_id = w.id)")
    if drifted:  # a system wallet has no cached balance: its entries are its balance
        v.append(f"{drifted} user wallets whose cached balance is not the sum of their entries")
    ((unbalanced,),) = database.rows(chaos.UNBALANCED_TRANSACTIONS)
    if unbalanced:
        v.append(f"{unbalanced} ledger transactions do not sum to zero")
    ((broken,),) = database.rows(chaos.BROKEN_BALANCE_CHAINS)
    if broken:
        v.append(f"{broken} ledger entries break their wallet's balance_after chain")
    ((negative,),) = database.rows("SELECT count(*) FROM wallets WHERE user_id IS NOT NULL AND balance < 0")
    if negative:
        v.append(f"{negative} user wallets below zero")
    ((held,),) = database.rows("SELECT coalesce(sum(balance), 0) FROM wallets WHERE user_id IS NOT NULL "
                               "AND currency = 'ETH'")
    if held != PURCHASE * len(set(completed)):
        v.append(f"user ETH wallets hold {held}, purchases add up to {PURCHASE * len(set(completed))}")
    ((transfers,),) = database.rows("SELECT count(*) FROM ledger_transactions WHERE kind = 'transfer'")
    if not transfers_acked <= transfers <= transfers_acked + transfers_unknown:
        v.append(f"{transfers} transfers in the ledger, {transfers_acked} acknowledged "
                 f"(+{transfers_unknown} without an answer)")
    return v


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    started_at: str
    options: dict
    machine: str
    platform: str
    baseline_tps: float | None = None
    worker_capacity: float | None = None
    worker_capacity_measured: bool = False
    phases: list = field(default_factory=list)
    goals: dict = field(default_factory=dict)
    violations: list = field(default_factory=list)
    finished: bool = False
    database: str = ""
    log_dir: str | None = None
    sessions: set = field(default_factory=set)  # the sessions of every process the run started

    @property
    def ok(self) -> bool:
        return self.finished and not self.violations

    @property
    def measured(self) -> PhaseResult | None:
        return next((p for p in self.phases if p.name == "measured"), None)


def run(options: Options) -> Report:
    """The whole run; returns its report (and cleans up whatever happens)."""
    rng, token = random.Random(options.seed), uuid.uuid4().hex
    log_dir, own_dir = chaos.run_log_dir(options.log_dir, "wallet-load-")
    secret = secrets.token_urlsafe(32)
    tell = say if options.verbose else (lambda _message: None)
    shape = (f"gunicorn {options.web_concurrency} x 4 threads, {options.workers} worker dyno(s) x "
             f"{options.worker_processes} processes, scheduler, private Redis, scratch database; APP_ENV=production")
    report = Report(started_at=f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
                    options={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
                    machine=f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start"
                            f"{cpu_pressure()}", platform=shape)
    name = f"wallet_load_{os.getpid()}_{token[:6]}"
    report.database = name
    try:
        with chaos.scratch_stage(pg_admin_url=options.pg_admin_url, name=name, token=token, log_dir=log_dir,
                                 keep=options.keep, say=tell) as (processes, database, redis):
            try:
                platform = chaos.Platform(chaos_options(options), processes, database, redis,
                                          settings=platform_settings(secret, log_dir / "prometheus"))
                platform.release()
                tell(f"starting {shape}")
                platform.start()
                port = platform.port
                tell(f"{options.users} users, their ETH and BTC wallets, {options.funding} purchases to fund them")
                users = create_users(port, options.users, token[:8])
                funding = create_sessions(port, users, options.funding, rng)
                tell("funding burst (measures the worker pool) ...")
                completed, capacity = fund(port, secret, funding, database, options.drain_timeout)
                report.worker_capacity_measured = options.worker_capacity is None
                report.worker_capacity = capacity if options.worker_capacity is None else options.worker_capacity
                tell(f"  the pool credited {len(completed)} purchases at {capacity:.1f}/s")
                webhook_rate = options.webhook_rate or report.worker_capacity * options.load_factor
                if options.baseline is not None:
                    tell(f"pgbench baseline, {options.baseline_clients} clients ...")
                    report.baseline_tps = run_baseline(options.baseline, options.baseline_clients, BASELINE_SECONDS)
                phases = []
                if options.rate is None:
                    phases.append(Phase("saturation", options.saturation_seconds, clients=options.saturation_clients,
                                        webhook_rate=webhook_rate))
                phases.append(Phase("measured", options.seconds, rate=options.rate, webhook_rate=webhook_rate))
                # Purchases for the runs' webhooks: the mix's own sessions go first, these ensure none goes without.
                needed = math.ceil(webhook_rate * sum(p.seconds + WARMUP for p in phases) * 1.2) + 20
                tell(f"{needed} more purchases for the webhooks of the runs ...")
                backlog = create_sessions(port, users, needed, rng)
                transfers_acked = transfers_unknown = 0
                for serial, phase in enumerate(phases, start=1):
                    if phase.name == "measured" and phase.rate is None:
                        phase.rate = report.phases[-1].throughput * options.load_factor
                    tell(f"{phase.name}: " + (f"closed loop, {phase.clients} connections" if phase.rate is None
                                             else f"open loop at {phase.rate:.0f} requests/s")
                        + f", webhooks at {phase.webhook_rate:.1f}/s, {phase.seconds:g} s ...")
                    result, sent, used, (acked, unanswered) = drive(platform, phase, users, options, secret,
                                                                    backlog, serial)
                    backlog = backlog[used:]
                    completed += sent
                    report.phases.append(result)
                    transfers_acked, transfers_unknown = transfers_acked + acked, transfers_unknown + unanswered
                    tell(f"  {result.throughput:.0f} requests/s, {result.load}")
                tell("waiting for the last credits ...")
                report.finished = wait_for_credits(database, completed, options.drain_timeout)
                for result in report.phases:
                    result.credit_latency = credit_latency(database, result.webhooks)
                report.violations = check(database, completed, transfers_acked, transfers_unknown)
                if not report.finished:
                    report.violations.append(f"not every webhook credited within {options.drain_timeout:.0f} s")
                report.goals = goals(report)
                return report
            finally:
                report.sessions = processes.sessions
    finally:
        if own_dir and not options.keep and report.ok:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            report.log_dir = str(log_dir)


def goals(report: Report) -> dict:
    measured = report.measured
    if measured is None:
        return {}
    p99 = {kind: s.p99 for kind, s in measured.endpoints.items() if kind in (*READS, "transfer")}
    lag = (measured.credit_latency or {}).get("p99")
    return {
        "reads_and_transfers_p99_ms": {"goal": GOAL_MS, "worst": max(p99.values(), default=None),
                                       "met": bool(p99) and max(p99.values()) < GOAL_MS},
        "webhook_to_credit_p99_s": {"goal": GOAL_CREDIT_S, "p99": lag, "met": lag is not None and lag < GOAL_CREDIT_S},
    }


# --------------------------------------------------------------------------- the report


def render(report: Report) -> str:
    o = report.options
    lines = [f"Mixed load {report.started_at}: {report.machine}", f"{report.platform}",
             f"{o['users']} users; the mix: " + ", ".join(f"{k} {w}" for k, w in o["mix"].items())
             + " (weights); rate limits on, raised by RATELIMIT_*"]
    if report.worker_capacity is not None:
        how = "measured by the funding burst" if report.worker_capacity_measured else "given (--worker-capacity)"
        lines.append(f"worker pool capacity: {report.worker_capacity:.1f} credits/s ({how})")
    if report.baseline_tps:
        lines.append(f"pgbench baseline, {o['baseline_clients']} clients: {report.baseline_tps:.0f} tx/s")
    for phase in report.phases:
        head = (f"closed loop, {o['saturation_clients']} connections" if phase.mode == "closed"
                else f"open loop, {phase.offered_rate:.0f} requests/s offered")
        ratio = (f", {phase.throughput / report.baseline_tps:.3f} x pgbench" if report.baseline_tps
                 and phase.mode == "closed" else "")
        lines += ["", f"{phase.name}: {head}, webhooks at {phase.webhook_rate:.1f}/s, {phase.seconds:g} s measured "
                      f"after {WARMUP:g} s warm-up: {phase.throughput:.0f} requests/s{ratio}; {phase.load}",
                  "", "| endpoint | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for kind, s in phase.endpoints.items():
            errors = ", ".join(f"{status}: {n}" for status, n in sorted(s.errors.items())) or "0"
            lines.append(f"| {kind} | {s.count} | {s.rate:.1f} | {s.p50:.1f} | {s.p95:.1f} | {s.p99:.1f} | "
                         f"{s.max:.1f} | {errors} |")
        lag = phase.credit_latency
        if lag:
            lines.append(f"\nwebhook -> credit, {lag['count']} purchases: p50 {lag['p50']:.3f} s, "
                         f"p95 {lag['p95']:.3f} s, p99 {lag['p99']:.3f} s, max {lag['max']:.3f} s")
        c = phase.cpu
        if c:
            requests = phase.throughput + phase.endpoints.get("webhook", Stats(0, 0, 0, 0, 0, 0, {})).rate
            lines.append(f"CPU, cores of {os.cpu_count()}: machine {c['machine']:.2f} = gunicorn {c['web']:.2f} "
                         f"({1000 * c['web'] / max(requests, 1e-9):.1f} ms per request) + workers {c['workers']:.2f} "
                         f"+ load generator {c['clients']:.2f} + PostgreSQL (the scratch database) "
                         f"{c['postgres']:.2f} + the rest of the machine {c['rest']:.2f}")
            if "jobs" in c:
                webhooks = phase.endpoints.get("webhook", Stats(0, 0, 0, 0, 0, 0, {})).count
                lines.append(f"RQ jobs run by the workers: {c['jobs']} for {webhooks} webhooks")
        if phase.stages:
            lines += ["", "Where the time went, ms (p50 / p99 / mean of the slowest 1%): queued = the load generator's "
                          "delay, to app = network + gunicorn's queue and parsing, app = the app's request line's "
                          "duration, from app = after-request steps, cleanup, gunicorn's write, the client's read",
                      "", "| endpoint | matched | queued | to app | app | from app |", "|---|---:|---:|---:|---:|---:|"]
            for kind, st in phase.stages.items():
                lines.append(f"| {kind} | {st['matched']} | " + " | ".join(
                    f"{st[part]['p50']:.1f} / {st[part]['p99']:.1f} / {st[part]['slowest_1pct']:.1f}"
                    for part in STAGES) + " |")
        if phase.webhook_starved:
            lines.append(f"({phase.webhook_starved} webhook arrivals found no purchase to complete)")
    g = report.goals
    if g:
        reads, credit = g["reads_and_transfers_p99_ms"], g["webhook_to_credit_p99_s"]
        lines += ["", "Goals at the measured run's load:",
                  f"- reads and transfers p99 < {reads['goal']:g} ms: worst {_num(reads['worst'], 1)} ms: "
                  + ("met" if reads["met"] else "NOT met"),
                  f"- webhook -> credit p99 < {credit['goal']:g} s: {_num(credit['p99'], 3)} s: "
                  + ("met" if credit["met"] else "NOT met")]
    lines += ["", f"Violations: {len(report.violations)}" + ("" if report.finished else " (credits unfinished)"),
              *(f"- {line}" for line in report.violations[:50])]
    return "\n".join(lines)


def _num(value, places: int) -> str:
    return "-" if value is None else f"{value:.{places}f}"


def as_json(report: Report) -> dict:
    data = asdict(report)
    data.pop("sessions")
    for phase in data["phases"]:
        phase["webhooks"] = len(phase["webhooks"])

    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(data)


def parse_args(argv: list[str] | None = None) -> tuple[Options, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Options()
    parser.add_argument("--users", type=int, default=d.users)
    parser.add_argument("--seconds", type=float, default=d.seconds, help="measured seconds of the open-loop run")
    parser.add_argument("--rate", type=float, help="requests/s of the measured run (skips the saturation search)")
    parser.add_argument("--load-factor", type=float, default=d.load_factor,
                        help="share of the saturation (and of the pool's capacity) to run at (default 0.5)")
    parser.add_argument("--webhook-rate", type=float, help="webhooks/s (default: load factor x the pool's capacity)")
    parser.add_argument("--worker-capacity", type=float, help="credits/s of the pool, instead of measuring it")
    parser.add_argument("--funding", type=int, default=d.funding, help="purchases of the funding burst")
    parser.add_argument("--saturation-clients", type=int, default=d.saturation_clients)
    parser.add_argument("--saturation-seconds", type=float, default=d.saturation_seconds)
    parser.add_argument("--workers", type=int, default=d.workers, help="worker dynos")
    parser.add_argument("--worker-processes", type=int, default=d.worker_processes, help="WORKER_PROCESSES each")
    parser.add_argument("--web-concurrency", type=int, default=d.web_concurrency, help="gunicorn workers")
    parser.add_argument("--client-processes", type=int, default=d.client_processes)
    parser.add_argument("--mix", default=",".join(f"{k}={w}" for k, w in MIX.items()),
                        help="weights of " + ", ".join(MIX))
    parser.add_argument("--baseline", type=Path, default=Path(os.environ.get("BENCH_BASELINE", DEFAULT_BASELINE)))
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the result as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and the logs")
    args = parser.parse_args(argv)
    try:
        mix = {k: int(w) for k, w in (item.split("=") for item in args.mix.split(",") if item)}
    except ValueError:
        parser.error("--mix takes kind=weight pairs")
    if set(mix) - set(MIX) or not any(mix.values()):
        parser.error(f"--mix kinds are {', '.join(MIX)}")
    baseline = None if args.no_baseline or not (args.baseline.is_file() and os.access(args.baseline, os.X_OK)) \
        else args.baseline.resolve()
    if baseline is None and not args.no_baseline:
        say(f"baseline script {args.baseline} not found: no pgbench ratio")
    if args.users < 2 or args.seconds <= 0 or args.funding < 1:
        parser.error("at least 2 users, 1 funding purchase and a positive --seconds")
    return Options(users=args.users, workers=args.workers, worker_processes=args.worker_processes,
                   web_concurrency=args.web_concurrency, funding=args.funding, worker_capacity=args.worker_capacity,
                   rate=args.rate, load_factor=args.load_factor, webhook_rate=args.webhook_rate,
                   saturation_clients=args.saturation_clients, saturation_seconds=args.saturation_seconds,
                   seconds=args.seconds, client_processes=args.client_processes, mix=mix, baseline=baseline,
                   seed=args.seed, keep=args.keep), args.json


def main(argv: list[str] | None = None) -> int:
    options, json_path = parse_args(argv)
    try:
        report = run(options)
    except KeyboardInterrupt:
        print("interrupted: every process of the run stopped" + ("" if options.keep else ", the scratch database "
                                                                 "dropped"), file=sys.stderr)
        return 130
    print(render(report))
    if json_path is not None:
        json_path.write_text(json.dumps(as_json(report), indent=2, default=str) + "\n")
    if report.log_dir:
        print(f"\nlogs kept in {report.log_dir}" + (f", database {report.database}" if options.keep else ""))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
