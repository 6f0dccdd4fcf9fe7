"""GET /metrics under the real web process (bin/start-web, two forked gunicorn workers) started with
no PROMETHEUS_MULTIPROC_DIR: gunicorn.conf.py makes a private directory, every worker counts into it,
and any worker's scrape reports the money moved through all of them; the directory goes at exit."""
import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.app.test_web_process import _free_port, _workers, running_web, web_env

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
    env = web_env(settings, port, TMPDIR=str(scratch))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with running_web(env, tmp_path / "web.log") as web:
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
    assert not list(scratch.iterdir()), "the private metrics directory outlived gunicorn"
