"""bench/request_path.py, short: the app under gunicorn as the Procfile starts it, next to the bare
Flask ceiling route, every request answered as it should be, the books balanced, and the CPU of the
server, its user-mode part, the clients' and PostgreSQL's reported. Timings are printed by the
script, never asserted here."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.leftovers import database_exists
from wallet_api.local_services import resolve_test_services

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_run_measures_the_app_and_the_ceiling_and_leaves_the_books_balanced(settings):
    redis_db = settings.redis_url.rsplit("/", 1)[1]
    done = subprocess.run(
        [sys.executable, "bench/request_path.py", "--seconds", "1", "--rounds", "1", "--clients", "2",
         "--scenarios", "transfer,ceiling", "--no-baseline", "--redis-db", redis_db],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    medians = done.stdout[done.stdout.index("Medians over 1 round(s):"):].splitlines()
    assert "of it usr" in medians[1] and "db ms/req" in medians[1], output
    rows = {line.split()[0]: line.split() for line in medians[3:5]}
    assert set(rows) == {"transfer", "ceiling"}, output
    for scenario, (_, clients, rate, *_, errors, srv, usr, cli, db, pgbench, ratio) in rows.items():
        assert clients == "2" and float(rate) > 0 and errors == "0", output
        assert 0 < float(usr) <= float(srv) and float(cli) > 0, output
        assert db == "-" or float(db) >= 0, output
        assert (pgbench, ratio) == ("-", "-"), output
    assert "0 drifted wallets, sum of all entries = 0" in done.stdout, output
    name = next(word for word in output.split() if word.startswith("wallet_api_bench_http_"))
    assert not database_exists(resolve_test_services()[0], name.rstrip(":,"))
