"""bin/rq-dashboard: the operators' view of the app's RQ queues, on the app's REDIS_URL, reachable from
this host only (127.0.0.1), never with a public bind."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from wallet_api.queues import QUEUE_NAMES, get_queue

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bin" / "rq-dashboard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN on `port`, from the kernel's own tables."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                # IPv4 is written as one little-endian word; any IPv6 listener is kept raw (never loopback-only).
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else f"[{address}]")
    return found


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def dashboard(settings, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    log_path = tmp_path_factory.mktemp("rq-dashboard") / "rq-dashboard.log"
    log = open(log_path, "wb")
    process = subprocess.Popen([str(SCRIPT), "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if get(port, "/")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "rq-dashboard did not answer within 30 s"
            time.sleep(0.2)
        yield port, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)


def test_it_lists_the_apps_queues_with_their_jobs(app_ctx, dashboard):
    port, _ = dashboard
    for name in QUEUE_NAMES:
        get_queue(name).enqueue("worker.jobs.drain_webhook_events")  # no worker runs: it waits in the queue
    status, page = get(port, "/")
    assert status == 200 and b"RQ dashboard" in page
    status, body = get(port, "/0/data/queues.json")
    assert status == 200
    counts = {queue["name"]: queue["count"] for queue in json.loads(body)["queues"]}
    assert counts == {name: 1 for name in QUEUE_NAMES}


def test_it_listens_on_loopback_only(dashboard):
    port, _ = dashboard
    assert listening_addresses(port) == {"127.0.0.1"}


def test_deleting_jobs_is_switched_off(app_ctx, dashboard):
    port, _ = dashboard
    job = get_queue(QUEUE_NAMES[0]).enqueue("worker.jobs.drain_webhook_events")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("POST", f"/job/{job.id}/delete")
    response = connection.getresponse()
    assert json.loads(response.read()) == {"status": "DISABLED"}
    assert get_queue(QUEUE_NAMES[0]).count == 1


@pytest.mark.parametrize("bind", [["--bind", "0.0.0.0"], ["-b", "0.0.0.0"], ["--bind=0.0.0.0"]])
def test_a_public_bind_is_refused(settings, bind):
    done = subprocess.run([str(SCRIPT), *bind], cwd=ROOT, env={**os.environ, "REDIS_URL": settings.redis_url},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "127.0.0.1 only" in done.stderr
