"""A dyno is stopped with SIGTERM and killed 30 s later. Every process stops in time without losing
work: gunicorn finishes the requests it has accepted (a transfer is either answered 201 and in the
ledger, or refused before it did anything), and a worker stopped in the middle of applying a
webhook either finishes it or leaves the event for the next worker, which credits it exactly once.
(The scheduler's SIGTERM is in test_tls_redis.py.)"""
import datetime as dt
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from tests.onramp.support import (ROOT, RowLock, children_of, finish, kill_tree, moonpay_event, post_webhook,
                                  rq_worker_command, start_worker_process, wait_for, worker_env)
from wallet_api.db_types import utcnow
from wallet_api.onramp.retry_job import run_webhook_maintenance

pytestmark = pytest.mark.slow

HEROKU_GRACE_SECONDS = 30  # between SIGTERM and SIGKILL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_web(settings, log: Path, **env) -> tuple[subprocess.Popen, int]:
    """bin/start-web (gunicorn, gunicorn.conf.py) on a free port, once both workers answer."""
    port = _free_port()
    with open(log, "wb") as out:
        web = subprocess.Popen([str(ROOT / "bin" / "start-web")], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                               env=worker_env(settings, PORT=str(port), WEB_CONCURRENCY="2", GUNICORN_THREADS="4",
                                              DB_POOL_SIZE="4", **env), start_new_session=True)

    def up() -> bool:
        assert web.poll() is None, log.read_text()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            return connection.getresponse().status == 200 and len(children_of(web.pid)) == 2
        except OSError:
            return False

    wait_for(up, timeout=60, interval=0.2, message="gunicorn to serve")
    return web, port


class TransferLoad:
    """Threads POSTing transfers of 1.00, each on a new connection, until the server stops taking them;
    every attempt is recorded with its reference and what came back."""

    def __init__(self, port: int, headers: dict, source, destination, threads: int = 6):
        self.port, self.headers, self.source, self.destination = port, headers, source, destination
        self.results: list[dict] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> "TransferLoad":
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)
        assert not any(thread.is_alive() for thread in self._threads), "a load thread is still sending"

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reference = uuid.uuid4().hex
            result = {"reference": reference}
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=40)
                connection.request("POST", "/transfers", body=json.dumps({
                    "from_wallet_id": str(self.source), "to_wallet_id": str(self.destination), "amount": "1.00",
                    "reference": reference}), headers={**self.headers, "Content-Type": "application/json"})
                response = connection.getresponse()
                result.update(status=response.status, body=json.loads(response.read() or b"null"),
                              answered_at=time.monotonic())
            except ConnectionRefusedError:
                return  # the listener is closed: the server takes no more work
            except (OSError, http.client.HTTPException) as exc:
                result.update(error=type(exc).__name__)
            with self._lock:
                self.results.append(result)


def test_sigterm_to_gunicorn_under_transfer_load_finishes_accepted_requests_and_loses_nothing(
        settings, make_user, funded_wallet, make_wallet, auth_headers, books, db_read, tmp_path):
    payer = make_user()
    source, destination = funded_wallet("1000.00", user=payer), make_wallet()
    log = tmp_path / "web.log"
    web, port = _start_web(settings, log, LEDGER_LOCK_TIMEOUT_MS="20000")
    try:
        with RowLock(settings, "wallets", source) as lock:
            load = TransferLoad(port, auth_headers(payer), source, destination).start()
            # Transfers are inside the ledger, waiting for the source wallet's row lock: in flight.
            wait_for(lambda: len(lock.waiting_backends()) >= 4, timeout=30, message="transfers in flight")
            in_flight = len(lock.waiting_backends())
            signalled = time.monotonic()
            os.kill(web.pid, signal.SIGTERM)
            time.sleep(1.5)  # the dyno is stopping; the accepted requests still wait for the lock
        code = web.wait(timeout=HEROKU_GRACE_SECONDS)
        stopped_after = time.monotonic() - signalled
        load.join(timeout=45)
    finally:
        kill_tree(web.pid)
    assert code == 0, log.read_text()
    assert stopped_after < HEROKU_GRACE_SECONDS

    results = load.results
    created = [r for r in results if r.get("status") == 201]
    unexpected = [r for r in results if "status" in r and r["status"] != 201]
    assert not unexpected, unexpected
    # The requests that were in flight at SIGTERM were answered after it, not cut off.
    assert len([r for r in created if r["answered_at"] > signalled]) >= in_flight
    transfers = {row["reference"]: row for row in db_read(
        "SELECT id, reference, amount FROM ledger_transactions WHERE kind = 'transfer'")}
    assert {r["reference"] for r in created} == set(transfers)  # answered 201 <=> in the ledger
    assert all(str(transfers[r["reference"]]["id"]) == r["body"]["id"] for r in created)
    # A request cut off without an answer did nothing at all.
    assert not {r["reference"] for r in results if "error" in r} & set(transfers)
    assert books.balance(source) == Decimal("1000.00") - len(created) == books.entries_sum(source)
    assert books.balance(destination) == Decimal(len(created))
    assert books.unbalanced_transactions() == 0 and books.drifted_wallets() == 0


@pytest.fixture
def blocked_webhook(request, client, user, onramp, settings):
    """A completed purchase's webhook whose job is mid-apply in a real worker process (of a pool of
    `request.param` processes, default one process): the event row is claimed and the job waits for the
    purchase's row lock, held by the test."""
    onramp_id, wallet_id = onramp(user, "ETH")
    assert post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, amount="0.75")).status_code == 200
    lock = RowLock(settings, "onramp_transactions", onramp_id).__enter__()
    processes = getattr(request, "param", 1)
    worker = start_worker_process(settings, command=rq_worker_command(settings, burst=False, processes=processes),
                                  LEDGER_LOCK_TIMEOUT_MS="3000", LOG_LEVEL="INFO")
    try:
        wait_for(lock.waiting_backends, timeout=30, message="the job to block mid-apply")
        yield worker, lock, wallet_id
    finally:
        lock.release()
        kill_tree(worker.pid)


def _sigterm(worker) -> tuple[str, float]:
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    output = finish(worker, timeout=HEROKU_GRACE_SECONDS)
    return output, time.monotonic() - started


@pytest.mark.parametrize("blocked_webhook", [2], indirect=True, ids=["a pool of two"])  # WORKER_PROCESSES' default
def test_a_worker_stopped_mid_job_finishes_the_job_then_exits(blocked_webhook, books):
    worker, lock, wallet_id = blocked_webhook
    started = time.monotonic()
    os.killpg(worker.pid, signal.SIGTERM)  # as Heroku does: every process of the dyno at once
    time.sleep(1)
    assert worker.poll() is None  # warm shutdown: the job in hand is not abandoned
    lock.release()
    output = finish(worker, timeout=HEROKU_GRACE_SECONDS)
    assert worker.returncode == 0, output
    assert time.monotonic() - started < HEROKU_GRACE_SECONDS
    assert books.balance(wallet_id) == Decimal("0.75") and books.credits(wallet_id) == 1
    assert books.events()[0]["outcome"] == "credited"


def test_a_worker_stopped_while_its_job_cannot_finish_exits_in_time_and_the_event_is_credited_once_later(
        blocked_webhook, app, run_jobs, books):
    worker, lock, wallet_id = blocked_webhook
    output, seconds = _sigterm(worker)  # the lock stays held: the job gives up at its lock timeout
    assert worker.returncode == 0, output
    assert seconds < HEROKU_GRACE_SECONDS
    lock.release()
    # Nothing half-written: no credit, the books balance, and the event waits for another try.
    assert books.credits(wallet_id) == 0 and books.unbalanced_transactions() == 0
    event = books.events()[0]
    assert (event["status"], event["attempts"]) == ("retry_scheduled", 1)

    with app.app_context():  # the sweeper, once the event's retry is due
        run_webhook_maintenance(now=utcnow() + dt.timedelta(hours=1))
    assert run_jobs()  # the next worker
    assert books.balance(wallet_id) == Decimal("0.75") and books.credits(wallet_id) == 1
    assert books.events()[0]["status"] == "processed"


def test_a_worker_pool_signalled_while_still_starting_stops_instead_of_working_on(settings, tmp_path):
    """A dyno may be stopped seconds after it started: the SIGTERM then reaches the pool while it forks
    its workers, and workers still building the app, before RQ has installed its signal handlers."""
    log = tmp_path / "worker.log"
    with open(log, "w") as log_file:
        worker = start_worker_process(settings, command=rq_worker_command(settings, burst=False, processes=2),
                                      log_file=log_file, LOG_LEVEL="INFO")
    try:
        wait_for(lambda: "worker_starting" in log.read_text(), timeout=30, message="the worker to start")
        started = time.monotonic()
        os.killpg(worker.pid, signal.SIGTERM)
        code = worker.wait(timeout=HEROKU_GRACE_SECONDS)
    finally:
        kill_tree(worker.pid)
    assert code == 0, log.read_text()
    assert time.monotonic() - started < HEROKU_GRACE_SECONDS
