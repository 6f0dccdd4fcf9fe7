"""Every run of every job is recorded; two runs of one job never overlap; a job that raises records a
failed run and a JOB_CRASH alert and still fails in RQ; admins see each job's state and start one."""
import datetime as dt
import uuid
from decimal import Decimal

import psycopg2
import pytest
from rq import Queue
from rq.registry import FailedJobRegistry
from rq_scheduler import Scheduler

from wallet_api.extensions import db
from wallet_api.jobs.runner import run_job
from wallet_api.queues import DEFAULT
from worker.schedule import register_schedule


def run(app, name, work, **kwargs):
    with app.app_context():
        try:
            return run_job(name, work, **kwargs)
        finally:
            db.session.remove()


def test_a_successful_run_is_recorded_with_its_counts(app, books):
    result = run(app, "webhook-retry", lambda: {"retried": 2, "swept": 0, "amount": Decimal("1.5")})
    (row,) = books.read("SELECT * FROM job_runs")
    assert result["run_id"] == str(row["id"]) and result["status"] == "succeeded"
    assert (row["job_name"], row["trigger"], row["status"]) == ("webhook-retry", "scheduled", "succeeded")
    assert row["counts"] == {"retried": 2, "swept": 0, "amount": "1.5"}  # decimals stored as strings
    assert row["started_at"] <= row["finished_at"] and row["error"] is None


def test_a_failing_run_is_recorded_raises_job_crash_and_reraises(app, books):
    run(app, "wallet-reconciliation", lambda: {"ok": 1})

    def explode():
        raise RuntimeError("the disk is on fire")

    for _ in range(2):
        with pytest.raises(RuntimeError, match="on fire"):
            run(app, "wallet-reconciliation", explode)
    runs = books.read("SELECT status, error FROM job_runs ORDER BY created_at")
    assert [r["status"] for r in runs] == ["succeeded", "failed", "failed"]
    assert runs[1]["error"] == "RuntimeError: the disk is on fire"
    (alert,) = books.read("SELECT * FROM alert_log")
    assert (alert["alert_type"], alert["severity"], alert["subject"], alert["occurrences"]) == \
        ("JOB_CRASH", "critical", "job:wallet-reconciliation", 2)
    success = books.read("SELECT finished_at FROM job_runs WHERE status = 'succeeded'")[0]["finished_at"]
    assert alert["metadata"]["job_name"] == "wallet-reconciliation"
    assert alert["metadata"]["error"] == "RuntimeError: the disk is on fire"
    assert dt.datetime.fromisoformat(alert["metadata"]["last_success_at"]) == success


def test_two_runs_of_one_job_never_overlap_and_the_skipped_one_says_so(app, settings, books):
    # Another worker is in the middle of a run: it holds the job's lock and its row says running.
    holder = psycopg2.connect(settings.database_url)
    holder.autocommit = True
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(hashtext('wallet_api.job:wallet-reconciliation'))")
        running = uuid.uuid4()
        cur.execute("INSERT INTO job_runs (id, job_name, trigger, status, started_at) "
                    "VALUES (%s, 'wallet-reconciliation', 'scheduled', 'running', now())", (str(running),))
    try:
        ran = []
        result = run(app, "wallet-reconciliation", lambda: ran.append(1))
        assert ran == [] and result["status"] == "skipped" and str(running) in result["skipped"]
        other = run(app, "webhook-retry", lambda: ran.append(1))  # another job is not blocked
        assert other["status"] == "succeeded" and ran == [1]
    finally:
        holder.close()  # the holder's process dies: PostgreSQL releases its lock
    assert run(app, "wallet-reconciliation", lambda: {})["status"] == "succeeded"
    rows = {r["id"]: r for r in books.read("SELECT * FROM job_runs WHERE job_name = 'wallet-reconciliation'")}
    assert rows[running]["status"] == "failed" and rows[running]["error"].startswith("abandoned")
    assert sorted(r["status"] for r in rows.values()) == ["failed", "skipped", "succeeded"]


def test_a_job_raising_inside_a_worker_fails_in_rq_too(app, make_settings_app, run_jobs, redis_client, books):
    # MoonPay unreachable: provider reconciliation fails, visibly, in both records.
    broken = make_settings_app(moonpay_api_base_url="http://127.0.0.1:1")
    Queue(DEFAULT, connection=redis_client).enqueue("worker.jobs.provider_reconciliation")
    run_jobs(broken)
    assert len(FailedJobRegistry(DEFAULT, connection=redis_client)) == 1
    (row,) = books.read("SELECT status, error FROM job_runs")
    assert row["status"] == "failed" and "MoonPay" in row["error"]
    (alert,) = books.read("SELECT alert_type, subject FROM alert_log")
    assert alert == {"alert_type": "JOB_CRASH", "subject": "job:provider-reconciliation"}


# --------------------------------------------------------------------------- admin routes


def test_admins_see_every_periodic_job_with_interval_last_run_and_next_run(app, client, admin, auth_headers,
                                                                           redis_client, settings):
    register_schedule(scheduler=Scheduler(connection=redis_client), settings=settings)
    run(app, "webhook-retry", lambda: {"swept": 0})

    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run(app, "webhook-retry", boom)
    body = client.get("/admin/jobs", headers=auth_headers(admin)).get_json()
    jobs = {job["name"]: job for job in body["items"]}
    assert set(jobs) == {"wallet-reconciliation", "provider-reconciliation", "webhook-retry", "idempotency-purge",
                         "alert-notifications", "backup"}
    retry = jobs["webhook-retry"]
    assert retry["interval_seconds"] == 300 and retry["enabled"]
    assert retry["last_run"]["status"] == "failed" and "boom" in retry["last_run"]["error"]
    assert retry["last_success_at"] is not None and retry["next_run_at"] is not None
    assert jobs["wallet-reconciliation"]["interval_seconds"] == 900 and jobs["wallet-reconciliation"]["last_run"] is None
    assert jobs["alert-notifications"]["enabled"] is False
    assert jobs["backup"]["enabled"] is False and jobs["backup"]["interval_seconds"] == 86400


def test_an_admin_runs_a_job_now_and_follows_its_run(app, client, admin, auth_headers, run_jobs, redis_client):
    headers = auth_headers(admin)
    accepted = client.post("/admin/jobs/wallet-reconciliation/run", headers=headers)
    assert accepted.status_code == 202
    body = accepted.get_json()
    assert body["status"] == "queued" and body["trigger"] == "manual" and body["requested_by"] == str(admin.id)
    run_id = body["run_id"]
    assert len(Queue(DEFAULT, connection=redis_client)) == 1
    run_jobs()
    done = client.get(f"/admin/jobs/runs/{run_id}", headers=headers).get_json()
    assert done["status"] == "succeeded" and done["counts"]["balance_mismatches"] == 0
    runs = client.get("/admin/jobs/wallet-reconciliation/runs", headers=headers).get_json()["items"]
    assert [r["id"] for r in runs] == [run_id]

    unknown = client.post("/admin/jobs/rebalance-everything/run", headers=headers)
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "job_not_found"
    assert client.get("/admin/jobs/nope/runs", headers=headers).status_code == 404
    assert client.get(f"/admin/jobs/runs/{uuid.uuid4()}", headers=headers).status_code == 404


def test_a_run_that_cannot_be_queued_is_a_503_and_recorded_as_failed(make_settings_app, admin, auth_headers, books):
    app = make_settings_app(redis_url="redis://127.0.0.1:1/0")
    response = app.test_client().post("/admin/jobs/webhook-retry/run", headers=auth_headers(admin))
    assert response.status_code == 503 and response.get_json()["error"] == "queue_unavailable"
    (row,) = books.read("SELECT status, error FROM job_runs")
    assert row["status"] == "failed" and "could not be queued" in row["error"]


def test_job_routes_are_for_admins_only(client, user, auth_headers):
    for method, path in (("get", "/admin/jobs"), ("post", "/admin/jobs/webhook-retry/run"),
                         ("get", "/admin/jobs/webhook-retry/runs"), ("get", f"/admin/jobs/runs/{uuid.uuid4()}")):
        assert getattr(client, method)(path).status_code == 401
        assert getattr(client, method)(path, headers=auth_headers(user)).status_code == 403
