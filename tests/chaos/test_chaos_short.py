"""The chaos run of bench/chaos.py, short: the real processes (gunicorn, a worker dyno of two workers,
the scheduler) on a scratch database and a private Redis; purchases whose webhooks arrive 2-5 times,
out of order, some of them meant to fail, while a worker is killed -9 in the middle of a drain's
transaction, Redis is flushed, the application's database connections are terminated, the web
process restarts and Redis is killed and comes back empty. Afterwards no money is lost or doubled,
every event is processed or dead-lettered (with an alert) by the system alone, every process is
back, and nothing of the run is left behind."""
import pytest

from bench import chaos
from tests.leftovers import database_exists, processes_in_sessions
from wallet_api.local_services import resolve_test_services

pytestmark = pytest.mark.slow

FAULTS = ("worker-kill", "redis-flush", "pg-terminate", "web-restart", "redis-restart")


def test_a_short_chaos_run_loses_nothing_doubles_nothing_and_heals_by_itself(tmp_path):
    admin_url, _ = resolve_test_services()
    options = chaos.Options(
        purchases=30, users=4, workers=1, worker_processes=2, web_concurrency=1, senders=4, duration=14,
        faults=FAULTS, redis_down=2, stale_after=8, retry_interval=4, retry_backoff=(1, 2), max_retries=1,
        margin=15, seed=11, pg_admin_url=admin_url, log_dir=tmp_path, verbose=False)

    report = chaos.run(options)

    summary = chaos.render(report) + f"\n(logs: {tmp_path})"
    assert report.finished, summary
    assert report.violations == [], summary
    assert [fault.kind for fault in report.faults] == list(FAULTS), summary
    (kill,) = [fault for fault in report.faults if fault.kind == "worker-kill"]
    assert "mid-transaction" in kill.detail, summary
    assert report.counts["events_dead"] > 0 and report.counts["alerts"]["WEBHOOK_FAILURE"][0] > 0, summary
    assert report.timings["canary"] is not None and report.timings["sweeper"] is not None, summary

    # Nothing of the run is left: no process in a session it started, its database is gone.
    assert report.sessions and processes_in_sessions(report.sessions) == []
    assert not database_exists(admin_url, report.database)
