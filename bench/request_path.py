"""HTTP request-path benchmark: the app under gunicorn, next to pgbench in the same run (not a test).

    .venv/bin/python bench/request_path.py [--quick] [--seconds 8] [--rounds 3] [--clients 1,4,8,16]
                                           [--scenarios transfer,transfer_key,wallets,ledger,webhook,metrics,ceiling]
                                           [--baseline PATH | --no-baseline] [--redis-db 12]
                                           [--app-env development] [--py-spy DIR] [--keep-db] [--rate-limits]

What it does, bounded in time and count, on loopback only:
1. Makes a scratch database with the migrations (on TEST_DATABASE_URL's server, else PostgreSQL on
   127.0.0.1, else an embedded one) and uses its own Redis db (--redis-db, flushed before and
   after). Seeds, per client slot, two users with a funded USD wallet each (the first also holds
   BTC and ETH wallets) and 40 ledger entries per wallet, and mints their access tokens.
2. Starts the app with `bin/start-web`, exactly as the Procfile does (gunicorn.conf.py; the
   environment's WEB_CONCURRENCY / GUNICORN_THREADS / DB_POOL_SIZE if set, else as shipped) in
   production mode: JSON logs at INFO (written to a scratch file), the webhook IP allowlist on,
   Prometheus multiprocess metrics, RATELIMIT_ENABLED=false (--rate-limits: on, as in production, raised
   by RATELIMIT_* so that none is reached), fresh random secrets; behind a pretend
   router (TRUSTED_PROXY_COUNT=1, every request with X-Forwarded-Proto: https and X-Forwarded-For),
   since production serves HTTPS only; DATABASE_TLS_REQUIRED=false for the loopback server.
3. For each round and client count: runs the baseline `run-pgbench CLIENTS SECONDS` (the bare
   5-statement credit transaction; the denominator of every ratio), then each scenario with that
   many client *processes*, each one keep-alive HTTP/1.1 connection (http.client, TCP_NODELAY),
   one request at a time (closed loop), for a warm-up second and then --seconds measured:
     transfer      POST /transfers between the client's own two wallets (alternating direction)
     transfer_key  the same with a fresh Idempotency-Key header on every request
     wallets       GET /wallets
     ledger        GET /wallets/<id>/ledger?limit=20
     webhook       POST /webhooks/moonpay, a distinct correctly signed event each time (stored
                   and enqueued; no RQ worker runs, so this is acceptance alone)
     metrics       GET /metrics, a Prometheus scrape: every worker's counters and the gauges
                   read from PostgreSQL and Redis (cached 5 s per worker)
     ceiling       not the app: POST /credit on bench/ceiling_app.py, a bare Flask route running
                   pgbench's credit on raw psycopg2, served by a second gunicorn with the app's
                   worker class, workers and threads. The most a Flask request path can do here,
                   measured in the same round as the app and pgbench.
4. Prints every run, then the medians over rounds: req/s, latency p50/p95/p99 (what the client
   saw), errors (any unexpected status), the ratio to pgbench at the same client count, and CPU
   per request: "srv" is the gunicorn processes' CPU (master, live workers and reaped workers,
   read from /proc before and after), "cli" the load generator's own, which competes with the
   server and PostgreSQL for the same cores. The books are checked at the end.

The baseline script is ../shared/baseline/run-pgbench from the repository root (override with
--baseline or BENCH_BASELINE); when it is absent the ratios are skipped with a note.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VENV_BIN = Path(sys.executable).parent
SCENARIOS = ("transfer", "transfer_key", "wallets", "ledger", "webhook", "metrics", "ceiling")
DEFAULT_BASELINE = ROOT.parent / "shared" / "baseline" / "run-pgbench"
# Production refuses secrets that look like placeholders: fresh ones per run (forked clients inherit them).
WEBHOOK_SECRET = secrets.token_urlsafe(32)
JWT_SECRET = secrets.token_urlsafe(48)
# Production serves HTTPS only, behind a router: the clients speak as that router would (the app trusts
# one proxy hop), and gunicorn takes the scheme from X-Forwarded-Proto (forwarded_allow_ips).
PROXY_HEADERS = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "127.0.0.1"}
SEED_ENTRIES = 40
WARMUP_SECONDS = 1.0
TICK = os.sysconf("SC_CLK_TCK")


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RAISED_LIMIT = "1000000/minute"
LIMITED = ("AUTH", "WALLET_READ", "WALLET_WRITE", "TRANSFERS", "ONRAMP")


def app_environment(database_url: str, redis_url: str, port: int, metrics_dir: str,
                    app_env: str = "production", rate_limits: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "APP_ENV": app_env, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "JWT_SECRET": JWT_SECRET, "JWT_REFRESH_SECRET": secrets.token_urlsafe(48),
        "MOONPAY_WEBHOOK_SECRET": WEBHOOK_SECRET, "MOONPAY_SECRET_KEY": "sk_" + secrets.token_urlsafe(24),
        "TRUSTED_PROXY_COUNT": "1", "DATABASE_TLS_REQUIRED": "false",  # loopback: no TLS on the scratch server
        "CORS_ALLOWED_ORIGINS": "https://app.bench.invalid", "WEBHOOK_ALLOWED_IPS": "127.0.0.1",
        "RATELIMIT_ENABLED": "false", "PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        # Tokens are minted once, before the runs, which may outlast the usual 15 minutes.
        "ACCESS_TOKEN_TTL_SECONDS": "86400",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    if rate_limits:  # counted in Redis as in production, never reached
        env.update({"RATELIMIT_ENABLED": "true", **{f"RATELIMIT_{name}": RAISED_LIMIT for name in LIMITED}})
    for inherited in ("LOG_LEVEL", "LOG_JSON", "FLASK_APP"):
        env.pop(inherited, None)  # the APP_ENV defaults: INFO; JSON in production
    return env


@dataclass
class Slot:
    """One client's own users, wallets and tokens: nothing is shared between clients."""

    tokens: tuple[str, str]
    wallets: tuple[str, str]  # the two USD wallets the client moves money between


def migrate_and_seed(env: dict[str, str], slots: int) -> list[Slot]:
    from flask_migrate import upgrade
    from sqlalchemy import text

    from wallet_api import create_app
    from wallet_api.auth.tokens import issue_access_token
    from wallet_api.config import load_settings
    from wallet_api.extensions import db
    from wallet_api.wallets import ledger
    from wallet_api.wallets.models import SystemAccount

    app = create_app(load_settings({**env, "LOG_LEVEL": "WARNING"}))  # the seeding's own lines are noise
    made = []
    with app.app_context():
        upgrade()
        for i in range(slots):
            users, usd = [], []
            for j, currencies in enumerate((("USD", "BTC", "ETH"), ("USD",))):
                user_id = uuid.uuid4()
                db.session.execute(text("INSERT INTO users (id, email, password_hash, role) "
                                        "VALUES (:i, :e, 'x', 'USER')"),
                                   {"i": user_id, "e": f"bench-{i}-{j}-{user_id.hex[:8]}@example.com"})
                for currency in currencies:
                    wallet_id = uuid.uuid4()
                    db.session.execute(text("INSERT INTO wallets (id, user_id, currency) VALUES (:w, :u, :c)"),
                                       {"w": wallet_id, "u": user_id, "c": currency})
                    if currency == "USD":
                        usd.append(wallet_id)
                users.append(user_id)
            db.session.commit()
            for wallet_id in usd:
                for n in range(SEED_ENTRIES):
                    ledger.credit(wallet_id=wallet_id, amount=Decimal("100000.00") if n == 0 else Decimal("1.00"),
                                  kind="bench_seed", counter_account=SystemAccount.MOONPAY_CLEARING,
                                  idempotency_key=ledger.entry_key(source="bench", reference=f"seed-{wallet_id}-{n}",
                                                                   wallet_id=wallet_id, action=ledger.CREDIT))
            made.append(Slot(tokens=tuple(issue_access_token(user_id=u, role="USER") for u in users),
                             wallets=(str(usd[0]), str(usd[1]))))
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return made


def start_web(env: dict[str, str], port: int, log_path: Path, command: list[str] | None = None) -> subprocess.Popen:
    """bin/start-web, as the Procfile runs it (or another server command); returns once /health answers."""
    log_file = open(log_path, "ab")
    process = subprocess.Popen(command or [str(ROOT / "bin" / "start-web")], cwd=ROOT, env=env, stdout=log_file,
                               stderr=log_file, start_new_session=True)
    log_file.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bin/start-web exited with {process.returncode}; see {log_path}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200 and len(worker_pids(process.pid)) >= 1:
                connection.close()
                return process
        except OSError:
            pass
        time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"gunicorn did not answer /health; see {log_path}")


def start_ceiling(env: dict[str, str], database_url: str, port: int, log_path: Path) -> subprocess.Popen:
    """bench/ceiling_app.py under gunicorn, with the app's worker class, workers and threads."""
    sys.path.insert(0, str(ROOT / "bench"))
    import ceiling_app

    ceiling_app.setup(database_url)
    command = [str(VENV_BIN / "gunicorn"), "--config", os.devnull, "--worker-class", "gthread",
               "--workers", env.get("WEB_CONCURRENCY", "2"), "--threads", env.get("GUNICORN_THREADS", "4"),
               "--keep-alive", "5", "--preload", "--bind", f"127.0.0.1:{port}", "--chdir", str(ROOT / "bench"),
               "ceiling_app:app"]
    return start_web(env, port, log_path, command)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# --------------------------------------------------------------------------- CPU from /proc


def worker_pids(master: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    except OSError:
        return []


def _stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # fields from the 3rd (state) on


def server_cpu_seconds(master: int) -> float:
    """CPU of the gunicorn master, its live workers and the workers it has reaped (max_requests)."""
    return sum(server_cpu_split(master))


def server_cpu_split(master: int) -> tuple[float, float]:
    """(user, system) CPU of the gunicorn processes: user is the Python interpreter and the C
    libraries it calls, system the kernel's work for them (sockets, polling, futexes)."""
    fields = _stat(master)
    user, system = int(fields[11]) + int(fields[13]), int(fields[12]) + int(fields[14])  # u, s, cu, cs
    for pid in worker_pids(master):
        try:
            fields = _stat(pid)
            user, system = user + int(fields[11]), system + int(fields[12])
        except OSError:  # exited between the listing and the read: counted in cutime next time
            pass
    return user / TICK, system / TICK


def postgres_cpu_ticks() -> dict[int, int] | None:
    """CPU ticks of every local PostgreSQL process (postmaster, backends, WAL writer ...) by pid,
    None if none is visible (a remote server)."""
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                ticks[int(entry.name)] = sum(int(v) for v in _stat(int(entry.name))[11:13])
        except OSError:
            continue
    return ticks or None


def postgres_cpu_between(before: dict[int, int] | None, after: dict[int, int] | None) -> float | None:
    """PostgreSQL's CPU seconds between two readings: processes alive at both, plus those started
    in between. One that exited in between took its CPU with it (pools keep their backends)."""
    if before is None or after is None:
        return None
    return sum(ticks - before.get(pid, 0) for pid, ticks in after.items() if ticks >= before.get(pid, 0)) / TICK


# --------------------------------------------------------------------------- load generation


def webhook_body(n: str) -> bytes:
    return ('{"type":"transaction_updated","data":{"id":"mp_bench_%s","status":"waitingPayment",'
            '"updatedAt":"2026-11-28T10:00:00Z","externalTransactionId":"%s","externalCustomerId":"bench",'
            '"quoteCurrencyAmount":0.1,"baseCurrencyAmount":100,"currency":{"code":"eth"},'
            '"baseCurrency":{"code":"usd"}}}' % (n, uuid.uuid4())).encode()


def signature(body: bytes) -> str:
    t = str(int(time.time()))
    return f"t={t},s={hmac.new(WEBHOOK_SECRET.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


def request_maker(scenario: str, slot: Slot):
    """A function returning (method, path, body, headers, expected status) for the next request."""
    auth = [{"Authorization": f"Bearer {token}"} for token in slot.tokens]
    json_type = {"Content-Type": "application/json"}
    counter = 0

    def transfer(with_key: bool):
        nonlocal counter
        counter += 1
        direction = counter % 2
        source, destination = slot.wallets[direction], slot.wallets[1 - direction]
        body = json.dumps({"from_wallet_id": source, "to_wallet_id": destination, "amount": "1.00"}).encode()
        headers = {**auth[direction], **json_type}
        if with_key:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        return "POST", "/transfers", body, headers, 201

    def webhook():
        nonlocal counter
        counter += 1
        body = webhook_body(f"{os.getpid()}_{counter}_{uuid.uuid4().hex[:8]}")
        return "POST", "/webhooks/moonpay", body, {"Moonpay-Signature-V2": signature(body), **json_type}, 200

    return {
        "transfer": lambda: transfer(False),
        "transfer_key": lambda: transfer(True),
        "wallets": lambda: ("GET", "/wallets", None, auth[0], 200),
        "ledger": lambda: ("GET", f"/wallets/{slot.wallets[0]}/ledger?limit=20", None, auth[0], 200),
        "webhook": webhook,
        "metrics": lambda: ("GET", "/metrics", None, {}, 200),
        "ceiling": lambda: ("POST", "/credit", json.dumps({"wallet_id": random.randint(1, 10_000),
                                                           "amount": "1.00"}).encode(), json_type, 201),
    }[scenario]


def client_main(port: int, scenario: str, slot: Slot, measure_from: float, until: float, out) -> None:
    """One client process: one keep-alive connection, closed loop, latencies of the measured window."""
    random.seed()  # forked clients would otherwise draw the same wallets
    next_request = request_maker(scenario, slot)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.connect()
    # http.client writes headers and body in separate sends: without NODELAY, Nagle holds the body
    # until the server's delayed ACK and the benchmark would measure TCP, not the app.
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies, errors, statuses = [], 0, {}
    cpu_started = None
    while True:
        started = time.time()
        if started >= until:
            break
        if cpu_started is None and started >= measure_from:
            cpu_started = time.process_time()
        method, path, body, headers, expected = next_request()
        t0 = time.perf_counter()
        try:
            connection.request(method, path, body=body, headers={**PROXY_HEADERS, **headers})
            response = connection.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            status = 0
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        elapsed = time.perf_counter() - t0
        if started >= measure_from:
            latencies.append(elapsed * 1000)
            if status != expected:
                errors += 1
                statuses[status] = statuses.get(status, 0) + 1
    cpu = time.process_time() - cpu_started if cpu_started is not None else 0.0
    connection.close()
    out.put((latencies, errors, statuses, cpu))


@dataclass
class Run:
    round: int
    scenario: str
    clients: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    statuses: dict
    server_cpu_s: float
    client_cpu_s: float
    db_cpu_s: float | None = None
    server_user_s: float | None = None
    baseline_tps: float | None = None
    profile: dict[str, int] | None = None

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def server_ms(self) -> float:
        return 1000 * self.server_cpu_s / max(1, len(self.latencies_ms))

    @property
    def client_ms(self) -> float:
        return 1000 * self.client_cpu_s / max(1, len(self.latencies_ms))

    @property
    def user_ms(self) -> float | None:
        return None if self.server_user_s is None else 1000 * self.server_user_s / max(1, len(self.latencies_ms))

    @property
    def db_ms(self) -> float | None:
        return None if self.db_cpu_s is None else 1000 * self.db_cpu_s / max(1, len(self.latencies_ms))

    @property
    def ratio(self) -> float | None:
        return self.rate / self.baseline_tps if self.baseline_tps else None


# Where a sampled stack's time goes: the first bucket, from the innermost frame outwards, whose marker
# is in a frame's file. Standard-library frames (json, uuid, socket ...) count for their caller.
PROFILE_BUCKETS = (
    ("logging", ("structlog/", "logging/", "wallet_api/logging.py", "wallet_api/log_sanitiser.py",
                 "wallet_api/audit.py")),
    ("metrics", ("prometheus_client/", "wallet_api/metrics.py")),
    ("JWT", ("jwt/", "flask_jwt_extended/")),
    ("schemas (marshmallow, webargs, smorest)", ("marshmallow/", "webargs/", "flask_smorest/", "apispec/")),
    ("SQLAlchemy + psycopg2", ("sqlalchemy/", "flask_sqlalchemy/", "psycopg2/")),
    ("Redis + RQ", ("redis/", "rq/")),
    ("gunicorn (HTTP, threads)", ("gunicorn/",)),
    ("Flask, Werkzeug, CORS, limiter", ("flask/", "werkzeug/", "flask_cors/", "flask_limiter/", "limits/")),
    ("app code (wallet_api)", ("wallet_api/",)),
)


def profile_buckets(raw: str) -> dict[str, int]:
    """Samples per bucket of a py-spy raw (collapsed stacks) file."""
    counts: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        bucket = "other"
        for frame in reversed(stack.split(";")):
            found = next((name for name, markers in PROFILE_BUCKETS if any(m in frame for m in markers)), None)
            if found:
                bucket = found
                break
        counts[bucket] = counts.get(bucket, 0) + int(count)
    return counts


def _user_and_total(masters: list[int]) -> tuple[float, float]:
    splits = [server_cpu_split(pid) for pid in masters]
    return sum(user for user, _ in splits), sum(user + system for user, system in splits)


def run_scenario(port: int | list[int], master: int | list[int], scenario: str, clients: int, slots: list[Slot],
                 seconds: float, profile: Path | None = None) -> Run:
    """One measured run; with lists of ports and masters (several gunicorn instances, bench/scaling.py)
    the clients are spread round-robin and the CPU is the sum (py-spy records the first instance)."""
    ports = port if isinstance(port, list) else [port]
    masters = master if isinstance(master, list) else [master]
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    measure_from = time.time() + 0.5 + WARMUP_SECONDS  # 0.5 s to start the processes and connect
    until = measure_from + seconds
    processes = [context.Process(target=client_main, args=(ports[i % len(ports)], scenario, slots[i], measure_from,
                                                           until, out))
                 for i in range(clients)]
    for process in processes:
        process.start()
    time.sleep(max(0.0, measure_from - time.time()))
    user_before, cpu_before = _user_and_total(masters)
    db_before = postgres_cpu_ticks()
    spy = None
    if profile is not None:
        spy = subprocess.Popen([str(VENV_BIN / "py-spy"), "record", "--pid", str(masters[0]), "--subprocesses", "--gil",
                                "--nonblocking", "--rate", "200", "--format", "raw", "--duration",
                                str(max(1, int(seconds))), "--output", str(profile)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(max(0.0, until - time.time()))
    user_after, cpu_after = _user_and_total(masters)
    db_after = postgres_cpu_ticks()
    if spy is not None:
        spy.wait(timeout=60)
    results = [out.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    statuses: dict = {}
    for _, _, found, _ in results:
        for status, n in found.items():
            statuses[status] = statuses.get(status, 0) + n
    return Run(0, scenario, clients, seconds, [ms for lat, *_ in results for ms in lat],
               sum(r[1] for r in results), statuses, cpu_after - cpu_before, sum(r[3] for r in results),
               postgres_cpu_between(db_before, db_after),
               user_after - user_before)


def run_baseline(script: Path, clients: int, seconds: float) -> float | None:
    done = subprocess.run([str(script), str(clients), str(max(1, round(seconds)))], capture_output=True, text=True,
                          timeout=seconds + 180)
    lines = [line for line in done.stdout.splitlines() if line.startswith("tps ")]
    if done.returncode != 0 or not lines:
        note(f"baseline failed ({done.returncode}): {done.stderr[-500:]}")
        return None
    try:
        return float(lines[-1].split()[1])
    except (IndexError, ValueError):
        return None


# --------------------------------------------------------------------------- report


def cpu_pressure() -> str:
    """The kernel's CPU pressure (share of time some runnable task waited for a CPU), if it says."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        return f", CPU pressure (avg60) {dict(kv.split('=') for kv in some[1:])['avg60']}%"
    except (OSError, IndexError, KeyError, ValueError):
        return ""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(runs: list[Run], *, baseline: Path | None, missing: Path | None, config: str,
                 seconds: float) -> None:
    load = os.getloadavg()[0]
    print(f"\nHTTP request-path benchmark, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: "
          f"{os.cpu_count()} CPUs shared by gunicorn, PostgreSQL, Redis and the clients; {config}; "
          f"{seconds:g} s per run after {WARMUP_SECONDS:g} s warm-up; 1-min load average at the end {load:.1f}"
          f"{cpu_pressure()}")
    if missing is not None:
        print(f"No baseline: {missing} not found (--baseline PATH or BENCH_BASELINE); ratios are skipped.")
    elif baseline is None:
        print("No baseline (--no-baseline): ratios are skipped.")
    header = (f"{'round':>5} {'scenario':<13} {'clients':>7} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
              f"{'errors':>6} {'srv ms/req':>10} {'of it usr':>9} {'cli ms/req':>10} {'db ms/req':>9} {'pgbench':>8} "
              f"{'ratio':>6}")
    print("\nEvery run:\n" + header + "\n" + "-" * len(header))
    for run in runs:
        ratio = f"{run.ratio:.3f}" if run.ratio is not None else "-"
        tps = f"{run.baseline_tps:.0f}" if run.baseline_tps else "-"
        errors = f"{run.errors}" + (f" {run.statuses}" if run.errors else "")
        print(f"{run.round:>5} {run.scenario:<13} {run.clients:>7} {run.rate:>7.0f} {run.pct(50):>7.2f} "
              f"{run.pct(95):>7.2f} {run.pct(99):>7.2f} {errors:>6} {run.server_ms:>10.2f} {_ms(run.user_ms):>9} "
              f"{run.client_ms:>10.2f} {_ms(run.db_ms):>9} {tps:>8} {ratio:>6}")

    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.scenario, run.clients), []).append(run)
    rounds = len({run.round for run in runs})
    header = (f"{'scenario':<13} {'clients':>7} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
              f"{'errors':>6} {'srv ms/req':>10} {'of it usr':>9} {'cli ms/req':>10} {'db ms/req':>9} {'pgbench':>8} "
              f"{'ratio':>6}")
    print(f"\nMedians over {rounds} round(s):\n" + header + "\n" + "-" * len(header))

    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    for scenario in SCENARIOS:
        for (name, clients), group in sorted(groups.items(), key=lambda item: item[0][1]):
            if name != scenario:
                continue
            ratio, tps = med([r.ratio for r in group]), med([r.baseline_tps for r in group])
            print(f"{scenario:<13} {clients:>7} {med([r.rate for r in group]):>7.0f} "
                  f"{med([r.pct(50) for r in group]):>7.2f} {med([r.pct(95) for r in group]):>7.2f} "
                  f"{med([r.pct(99) for r in group]):>7.2f} {sum(r.errors for r in group):>6} "
                  f"{med([r.server_ms for r in group]):>10.2f} {_ms(med([r.user_ms for r in group])):>9} "
                  f"{med([r.client_ms for r in group]):>10.2f} "
                  f"{_ms(med([r.db_ms for r in group])):>9} {(f'{tps:.0f}' if tps else '-'):>8} "
                  f"{(f'{ratio:.3f}' if ratio is not None else '-'):>6}")
    print("\nratio: req/s over the baseline's tx/s at the same client count, in the same round. srv ms/req: CPU of"
          "\nthe gunicorn processes per request (of it usr: in user mode, i.e. Python and the C libraries it calls;"
          "\nthe rest is the kernel's work for them); cli ms/req: the load generator's CPU per request (same cores);"
          "\ndb ms/req: every local PostgreSQL process's CPU per request (anything else using the server counts too).")
    profiled = [run for run in runs if run.profile]
    if profiled:
        print("\nWhere the server's CPU went (py-spy samples of gunicorn threads holding the GIL, innermost "
              "known frame; ms per request = share of samples x srv ms/req):")
        for run in profiled:
            total = sum(run.profile.values())
            print(f"\n  round {run.round}, {run.scenario}, {run.clients} clients: {total} samples, "
                  f"{run.server_ms:.2f} ms CPU per request")
            for bucket, n in sorted(run.profile.items(), key=lambda item: -item[1]):
                print(f"    {bucket:<42} {n / total:>6.1%} {n / total * run.server_ms:>7.3f} ms")


def check_books(database_url: str) -> str:
    import psycopg2

    conn = psycopg2.connect(database_url)
    try:
        cur = conn.cursor()
        cur.execute("""SELECT count(*) FROM wallets w WHERE user_id IS NOT NULL AND balance <>
                       (SELECT coalesce(sum(amount), 0) FROM ledger_entries e WHERE e.wallet_id = w.id)""")
        drifted = cur.fetchone()[0]
        cur.execute("SELECT coalesce(sum(amount), 0) FROM ledger_entries")
        total = cur.fetchone()[0]
        return f"books after the runs: {drifted} drifted wallets, sum of all entries = {total}"
    finally:
        conn.close()


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 8; --quick 3)")
    parser.add_argument("--rounds", type=int, help="repeat everything; medians over rounds (default 3; --quick 1)")
    parser.add_argument("--clients", help="client counts (default 1,4,8,16; --quick 1,16)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="subset of " + ", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="a short run: 3 s, 1 round, clients 1,16 "
                        "(each still overridable)")
    parser.add_argument("--app-env", choices=("production", "development"), default="production",
                        help="APP_ENV of the server (default production: JSON logs, allowlist on); development "
                             "logs through structlog's ConsoleRenderer")
    parser.add_argument("--baseline", type=Path, default=Path(os.environ.get("BENCH_BASELINE", DEFAULT_BASELINE)),
                        help="the run-pgbench script (default ../shared/baseline/run-pgbench from the repository "
                             "root, or $BENCH_BASELINE)")
    parser.add_argument("--no-baseline", action="store_true", help="skip pgbench and the ratios")
    parser.add_argument("--redis-db", type=int, default=int(os.environ.get("BENCH_REDIS_DB", "12")),
                        help="Redis db of the local server to use and flush (default 12, or $BENCH_REDIS_DB)")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the scratch database")
    parser.add_argument("--rate-limits", action="store_true",
                        help="rate limits on, as in production, raised by RATELIMIT_* so that none is reached "
                             "(default off: RATELIMIT_ENABLED=false)")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="record each run's gunicorn processes with py-spy (pip install py-spy; it slows them "
                             "a little) into DIR as collapsed stacks, and print where the CPU went")
    args = parser.parse_args(argv)
    quick = {"seconds": 3, "rounds": 1, "clients": "1,16"} if args.quick else {}
    for name, default in (("seconds", 8), ("rounds", 3), ("clients", "1,4,8,16")):
        if getattr(args, name) is None:
            setattr(args, name, quick.get(name, default))
    clients = sorted({int(c) for c in args.clients.split(",") if c})
    scenarios = [s for s in args.scenarios.split(",") if s]
    if set(scenarios) - set(SCENARIOS) or not clients or min(clients) < 1 or args.rounds < 1 or args.seconds <= 0:
        parser.error("bad --scenarios, --clients, --rounds or --seconds")
    if args.py_spy is not None and not (VENV_BIN / "py-spy").exists():
        parser.error(f"--py-spy needs py-spy in {VENV_BIN} (pip install py-spy)")
    baseline, missing = (None if args.no_baseline else args.baseline.resolve()), None
    if baseline is not None and not (baseline.is_file() and os.access(baseline, os.X_OK)):
        note(f"baseline script {baseline} not found: ratios will be skipped")
        baseline, missing = None, baseline

    import psycopg2
    from redis import Redis

    from wallet_api.local_services import resolve_test_services, with_database

    admin_url, redis_server = resolve_test_services()
    redis_url = redis_server.rsplit("/", 1)[0] + f"/{args.redis_db}"
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    name = f"wallet_api_bench_http_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    database_url = with_database(admin_url, name)
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    port = free_port()
    env = app_environment(database_url, redis_url, port, str(workdir / "prometheus"), args.app_env,
                          args.rate_limits)
    web = ceiling = None
    runs: list[Run] = []
    try:
        note(f"scratch database {name}, Redis db {args.redis_db}: migrating and seeding "
             f"{max(clients)} client slots ...")
        slots = migrate_and_seed(env, max(clients))
        web = start_web(env, port, workdir / "web.log")
        if "ceiling" in scenarios:
            ceiling_port = free_port()
            ceiling = start_ceiling(env, database_url, ceiling_port, workdir / "ceiling.log")
        config = (f"gunicorn {env.get('WEB_CONCURRENCY', '2 (as shipped)')} workers x "
                  f"{env.get('GUNICORN_THREADS', '4 (as shipped)')} threads, DB_POOL_SIZE "
                  f"{env.get('DB_POOL_SIZE', '5 (as shipped)')}, APP_ENV={args.app_env}, logs at INFO, rate limits "
                  + ("on (raised)" if args.rate_limits else "off"))
        note(f"gunicorn master {web.pid}, workers {worker_pids(web.pid)}; app log {workdir / 'web.log'}")
        for round_no in range(1, args.rounds + 1):
            for count in clients:
                tps = None
                if baseline is not None:
                    note(f"round {round_no}: baseline run-pgbench {count} clients ...")
                    tps = run_baseline(baseline, count, args.seconds)
                for scenario in scenarios:
                    note(f"round {round_no}: {scenario}, {count} clients ...")
                    profile = None
                    if args.py_spy is not None:
                        args.py_spy.mkdir(parents=True, exist_ok=True)
                        profile = args.py_spy / f"{scenario}-{count}-round{round_no}.txt"
                    target = (ceiling_port, ceiling.pid) if scenario == "ceiling" else (port, web.pid)
                    run = run_scenario(*target, scenario, count, slots, args.seconds, profile)
                    run.round, run.baseline_tps = round_no, tps
                    if profile is not None and profile.exists():
                        run.profile = profile_buckets(profile.read_text())
                    runs.append(run)
                    redis.flushdb()  # enqueued webhook jobs: no worker runs here
        stop(web)
        web = None
        if ceiling is not None:
            stop(ceiling)
            ceiling = None
        lines = sum(1 for _ in open(workdir / "web.log", "rb"))
        print_report(runs, baseline=baseline, missing=missing, config=config, seconds=args.seconds)
        print(f"{check_books(database_url)}; the app wrote {lines} log lines")
    finally:
        for server in (web, ceiling):
            if server is not None:
                stop(server)
        redis.flushdb()
        if not args.keep_db:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
