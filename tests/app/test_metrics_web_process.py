"""GET /metrics under the real web process (bin/start-web, two forked gunicorn workers) started with
no PROMETHEUS_MULTIPROC_DIR: gunicorn.conf.py makes a private directory, every worker counts into it,
and any worker's scrape reports the money moved through all of them; the directory goes at exit."""
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.app.test_web_process import ROOT, _free_port, _get, _workers
from tests.conftest import TEST_JWT_SECRET, TEST_MOONPAY_SECRET, TEST_REFRESH_SECRET, TEST_WEBHOOK_SECRET

pytestmark = pytest.mark.slow
ROUND = 20


def _request(port: int, method: str, path: str, *, headers: dict, body: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # a new connection: any worker
    try:
        connection.request(method, path, body=json.dumps(body) if body else None,
                           headers={**headers, "Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def _scraped(port: int) -> dict:
    status, content_type, body = _request(port, "GET", "/metrics", headers={})
    assert status == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def _counted_transfers(metrics_dir: Path, pid: int) -> bool:
    # Each process's counters live in its own file, the metric's name and labels written as text.
    counters = metrics_dir / f"counter_{pid}.db"
    return counters.exists() and b'"operation": "transfer"' in counters.read_bytes()


def test_every_gunicorn_worker_counts_into_one_scrape_without_any_metrics_setting(
        settings, user, auth_headers, funded_wallet, make_wallet, tmp_path):
    source, target = funded_wallet("1000.00", user=user), make_wallet()
    port, scratch = _free_port(), tmp_path / "tmp"
    scratch.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"APP_ENV": "test", "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
                "JWT_SECRET": TEST_JWT_SECRET, "JWT_REFRESH_SECRET": TEST_REFRESH_SECRET,
                "MOONPAY_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET, "MOONPAY_SECRET_KEY": TEST_MOONPAY_SECRET,
                "RATELIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING", "PORT": str(port), "WEB_CONCURRENCY": "2",
                "GUNICORN_THREADS": "2", "DB_POOL_SIZE": "2", "TMPDIR": str(scratch),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    log = open(tmp_path / "web.log", "wb")
    web = subprocess.Popen([str(ROOT / "bin" / "start-web")], cwd=ROOT, env=env, stdout=log, stderr=log,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert web.poll() is None, (tmp_path / "web.log").read_text()
            try:
                if _get(port, "/health") == 200 and len(_workers(web.pid)) == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not start: " + (tmp_path / "web.log").read_text()
            time.sleep(0.2)
        [metrics_dir] = scratch.glob("wallet-metrics-*")  # made by gunicorn.conf.py, private to this master

        headers = auth_headers(user)
        body = {"from_wallet_id": str(source), "to_wallet_id": str(target), "amount": "1.00"}
        made = 0
        with ThreadPoolExecutor(max_workers=6) as pool:
            # Rounds of concurrent transfers until both workers have made some (usually the first).
            while made == 0 or not all(_counted_transfers(metrics_dir, pid) for pid in _workers(web.pid)):
                assert made < 5 * ROUND, "one worker took every connection"
                statuses = list(pool.map(lambda _: _request(port, "POST", "/transfers", headers=headers,
                                                            body=body)[0], range(ROUND)))
                assert statuses == [201] * ROUND
                made += ROUND

        transfers = ("wallet_ledger_operations_total",
                     (("currency", "USD"), ("operation", "transfer"), ("outcome", "ok")))
        posted = ("wallet_http_requests_total", (("method", "POST"), ("route", "/transfers"), ("status", "201")))
        for _ in range(10):  # each scrape on a new connection, answered by either worker
            scraped = _scraped(port)
            assert scraped[transfers] == made and scraped[posted] == made
            assert scraped[("wallet_ledger_amount_total", (("currency", "USD"), ("operation", "transfer")))] == made
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        code = web.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "web.log").read_text()
    assert not list(scratch.iterdir()), "the private metrics directory outlived gunicorn"
