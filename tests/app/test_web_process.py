"""The web process as the Procfile runs it: bin/start-web, gunicorn.conf.py (preloaded app, forked
workers), serving database-backed requests, then stopping cleanly on SIGTERM."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import TEST_JWT_SECRET, TEST_MOONPAY_SECRET, TEST_REFRESH_SECRET, TEST_WEBHOOK_SECRET

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, headers: dict | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _workers(master: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def web_env(settings, port: int, **extra: str) -> dict[str, str]:
    """The environment of bin/start-web for the test database and Redis: two workers of two threads."""
    return {**os.environ, "APP_ENV": "test", "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
            "JWT_SECRET": TEST_JWT_SECRET, "JWT_REFRESH_SECRET": TEST_REFRESH_SECRET,
            "MOONPAY_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET, "MOONPAY_SECRET_KEY": TEST_MOONPAY_SECRET,
            "RATELIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING", "PORT": str(port), "WEB_CONCURRENCY": "2",
            "GUNICORN_THREADS": "2", "DB_POOL_SIZE": "2",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


@contextmanager
def running_web(env: dict[str, str], log_path: Path):
    """bin/start-web until /health answers with both workers forked; SIGTERM at the end must exit 0."""
    log = open(log_path, "wb")
    web = subprocess.Popen([str(ROOT / "bin" / "start-web")], cwd=ROOT, env=env, stdout=log, stderr=log,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert web.poll() is None, log_path.read_text()
            try:
                if _get(int(env["PORT"]), "/health") == 200 and len(_workers(web.pid)) == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not start: " + log_path.read_text()
            time.sleep(0.2)
        yield web
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        code = web.wait(timeout=30)
        log.close()
    assert code == 0, log_path.read_text()


def test_bin_start_web_serves_database_requests_from_forked_workers_and_stops_on_sigterm(
        app, settings, user, auth_headers, tmp_path):
    port = _free_port()
    # A previous run's metrics files: summed into every scrape (or, torn, failing it) unless wiped at start.
    (tmp_path / "metrics").mkdir()
    stale = tmp_path / "metrics" / "counter_1.db"
    stale.write_bytes(b"not a metrics file")
    with running_web(web_env(settings, port, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics")),
                     tmp_path / "web.log"):
        headers = auth_headers(user)
        # Each request on a new connection, answered by whichever forked worker accepts it.
        assert {_get(port, "/wallets", headers) for _ in range(20)} == {200}
        assert _get(port, "/wallets") == 401
        assert not stale.exists() and _get(port, "/metrics") == 200
        _assert_gunicorn_answers_like_the_api(port)


def _assert_gunicorn_answers_like_the_api(port: int) -> None:
    """What gunicorn answers on its own (before the app) still speaks the API's language."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        assert response.getheader("Server") == "wallet-api"  # not "gunicorn" and its version
        # A request line past gunicorn's limit (a 10,000-character cursor): JSON, not an HTML page.
        connection.request("GET", "/wallets?cursor=" + "A" * 10_000)
        response = connection.getresponse()
        assert response.status == 414
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(response.read())["error"] == "uri_too_long"
    finally:
        connection.close()
    # A chunked body over MAX_CONTENT_LENGTH (1 MiB) is too large (413), not malformed (400).
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        pieces = [b'{"email": "', *([b"x" * 65536] * 17), b'", "password": "p"}']
        connection.request("POST", "/auth/login", body=iter(pieces), encode_chunked=True,
                           headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"] == "request_entity_too_large"
    finally:
        connection.close()


def test_the_master_freezes_the_preloaded_app_before_forking_a_worker(monkeypatch):
    """Full collections in the workers skip the app's objects (a stall of every thread of the worker
    otherwise): gunicorn calls pre_fork in the master right before each fork."""
    import gc
    import runpy

    # As if this process were a master that prepared its metrics directory already: nothing to set up.
    monkeypatch.setenv("WALLET_METRICS_DIR_MASTER", str(os.getpid()))
    hooks = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        hooks["pre_fork"](None, None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
