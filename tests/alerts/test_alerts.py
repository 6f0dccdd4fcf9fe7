"""Alerts: one open alert per (type, subject), however often and however concurrently it is raised;
admins list, read and resolve them with a note; critical and high ones are posted to
ALERT_WEBHOOK_URL by a job, and a failing notifier never fails the code that raised the alert."""
import json
import threading
import uuid

import pytest
from rq import Queue
from rq.registry import FailedJobRegistry

from wallet_api.alerts import notify
from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import raise_alert
from wallet_api.extensions import db
from wallet_api.queues import DEFAULT


def raise_one(app, alert_type=AlertType.BALANCE_MISMATCH, subject="wallet:1", **extra) -> uuid.UUID:
    with app.app_context():
        alert_id = raise_alert(alert_type=alert_type, subject=subject, title=extra.pop("title", "t"),
                               message=extra.pop("message", "m"), metadata=extra)
        db.session.commit()
        db.session.remove()
        return alert_id


def test_a_repeat_of_an_open_alert_bumps_it_instead_of_adding_one(app, books):
    first = raise_one(app, subject="wallet:a", actual="5")
    again = raise_one(app, subject="wallet:a", actual="6")
    other = raise_one(app, subject="wallet:b")
    assert first == again != other
    rows = books.read("SELECT subject, occurrences, metadata, severity, last_seen_at > created_at AS seen_later "
                      "FROM alert_log ORDER BY subject")
    assert [(r["subject"], r["occurrences"]) for r in rows] == [("wallet:a", 2), ("wallet:b", 1)]
    assert rows[0]["metadata"] == {"actual": "6"} and rows[0]["seen_later"] and rows[0]["severity"] == "critical"


def test_a_resolved_alert_is_history_and_the_same_problem_opens_a_new_one(app, admin, books):
    from wallet_api.alerts.service import resolve_alert

    first = raise_one(app, subject="wallet:a")
    with app.app_context():
        resolve_alert(alert_id=first, admin_id=admin.id, note="fixed the cache")
    second = raise_one(app, subject="wallet:a")
    assert second != first
    assert [r["resolved"] for r in books.read("SELECT resolved FROM alert_log ORDER BY created_at")] == [True, False]


def test_concurrent_raisers_of_one_alert_leave_one_row_counting_all_of_them(app, books):
    barrier = threading.Barrier(8)
    errors = []

    def raise_it():
        try:
            with app.app_context():
                barrier.wait(timeout=10)
                raise_alert(alert_type=AlertType.JOB_CRASH, subject="job:x", title="t", message="m")
                db.session.commit()
                db.session.remove()
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=raise_it) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert books.read("SELECT occurrences FROM alert_log") == [{"occurrences": 8}]


def test_each_type_has_its_severity_and_the_database_refuses_unknown_types(app, books):
    import psycopg2

    for alert_type in AlertType:
        raise_one(app, alert_type=alert_type, subject="s")
    severities = {r["alert_type"]: r["severity"] for r in books.read("SELECT alert_type, severity FROM alert_log")}
    assert severities == {"BALANCE_MISMATCH": "critical", "WEBHOOK_FAILURE": "high", "JOB_CRASH": "critical",
                          "CREDIT_SPIKE": "medium", "PROVIDER_MISMATCH": "high"}
    with pytest.raises(psycopg2.errors.CheckViolation):
        with psycopg2.connect(app.config["SETTINGS"].database_url) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO alert_log (id, alert_type, severity, subject, title, message) "
                        "VALUES (gen_random_uuid(), 'SOMETHING', 'high', 's', 't', 'm')")


# --------------------------------------------------------------------------- admin routes


def test_admins_list_open_alerts_newest_first_filtered_and_paginated(app, client, admin, auth_headers):
    ids = [raise_one(app, alert_type=AlertType.BALANCE_MISMATCH, subject=f"wallet:{i}") for i in range(3)]
    raise_one(app, alert_type=AlertType.CREDIT_SPIKE, subject="platform:USD")
    headers = auth_headers(admin)

    page = client.get("/admin/alerts/unresolved?alertType=BALANCE_MISMATCH&limit=2", headers=headers).get_json()
    assert [item["id"] for item in page["items"]] == [str(ids[2]), str(ids[1])]
    rest = client.get(f"/admin/alerts/unresolved?alertType=BALANCE_MISMATCH&cursor={page['next_cursor']}",
                      headers=headers).get_json()
    assert [item["id"] for item in rest["items"]] == [str(ids[0])] and rest["next_cursor"] is None
    medium = client.get("/admin/alerts/unresolved?severity=medium", headers=headers).get_json()["items"]
    assert [(a["alert_type"], a["subject"]) for a in medium] == [("CREDIT_SPIKE", "platform:USD")]
    assert len(client.get("/admin/alerts/unresolved", headers=headers).get_json()["items"]) == 4
    bad = client.get("/admin/alerts/unresolved?alertType=NOPE", headers=headers)
    assert bad.status_code == 422 and "alertType" in bad.get_json()["errors"]["query"]


def test_an_admin_reads_and_resolves_an_alert_with_a_note_once(app, client, admin, auth_headers):
    alert_id = raise_one(app, subject="wallet:w", expected="10.00", actual="12.00")
    headers = auth_headers(admin)
    detail = client.get(f"/admin/alerts/{alert_id}", headers=headers).get_json()
    assert detail["metadata"] == {"expected": "10.00", "actual": "12.00"} and detail["resolved"] is False

    assert client.post(f"/admin/alerts/{alert_id}/resolve", headers=headers, json={}).status_code == 422
    blank = client.post(f"/admin/alerts/{alert_id}/resolve", headers=headers, json={"note": "   "})
    assert blank.status_code == 422 and "note" in blank.get_json()["errors"]["json"]
    done = client.post(f"/admin/alerts/{alert_id}/resolve", headers=headers, json={"note": "cache rewritten"})
    assert done.status_code == 200
    body = done.get_json()
    assert body["resolved"] and body["resolved_by"] == str(admin.id) and body["resolution_note"] == "cache rewritten"
    assert body["resolved_at"] is not None
    again = client.post(f"/admin/alerts/{alert_id}/resolve", headers=headers, json={"note": "again"})
    assert again.status_code == 409 and again.get_json()["error"] == "already_resolved"
    assert client.get("/admin/alerts/unresolved", headers=headers).get_json()["items"] == []
    assert client.get(f"/admin/alerts/{uuid.uuid4()}", headers=headers).status_code == 404


def test_alert_routes_are_for_admins_only(app, client, user, auth_headers):
    alert_id = raise_one(app)
    for method, path, body in (("get", "/admin/alerts/unresolved", None), ("get", f"/admin/alerts/{alert_id}", None),
                               ("post", f"/admin/alerts/{alert_id}/resolve", {"note": "x"})):
        assert getattr(client, method)(path, json=body).status_code == 401
        assert getattr(client, method)(path, json=body, headers=auth_headers(user)).status_code == 403


# --------------------------------------------------------------------------- notifications


@pytest.fixture
def notifying_app(make_settings_app, httpserver):
    return make_settings_app(alert_webhook_url=httpserver.url_for("/hooks/alerts"))


def test_new_critical_and_high_alerts_are_posted_by_a_job_after_the_commit(notifying_app, httpserver, run_jobs,
                                                                          redis_client, books):
    httpserver.expect_request("/hooks/alerts", method="POST").respond_with_data("ok")
    critical = raise_one(notifying_app, subject="wallet:w", title="Wallet w is off")
    raise_one(notifying_app, alert_type=AlertType.CREDIT_SPIKE, subject="platform:USD")  # medium: not posted
    raise_one(notifying_app, subject="wallet:w", title="Wallet w is off")  # a repeat: not posted again
    assert len(Queue(DEFAULT, connection=redis_client)) == 1
    assert httpserver.log == []  # nothing was posted inside the transaction that raised it

    run_jobs(notifying_app)
    (request, _), = httpserver.log
    text = json.loads(request.data)["text"]
    assert "[CRITICAL] BALANCE_MISMATCH" in text and "Wallet w is off" in text and str(critical) in text
    notified = {r["alert_type"]: r["notified_at"] for r in books.read("SELECT alert_type, notified_at FROM alert_log")}
    assert notified["BALANCE_MISMATCH"] is not None and notified["CREDIT_SPIKE"] is None


def test_a_failing_notifier_fails_only_its_own_job_and_the_sweep_posts_later(notifying_app, httpserver, run_jobs,
                                                                            redis_client, books):
    import datetime as dt

    httpserver.expect_request("/hooks/alerts").respond_with_data("down", status=500)
    alert_id = raise_one(notifying_app, subject="wallet:w")  # the raiser commits fine
    run_jobs(notifying_app)
    (job_id,) = FailedJobRegistry(DEFAULT, connection=redis_client).get_job_ids() or \
        Queue(DEFAULT, connection=redis_client).scheduled_job_registry.get_job_ids()
    assert job_id
    row = books.read("SELECT notified_at, notify_attempts FROM alert_log WHERE id = :i", i=alert_id)[0]
    assert row == {"notified_at": None, "notify_attempts": 1}

    httpserver.clear()
    httpserver.expect_request("/hooks/alerts").respond_with_data("ok")
    with notifying_app.app_context():
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)
        assert notify.sweep_unnotified(now=later) == {"posted": 1}
        db.session.remove()
    assert books.read("SELECT notified_at IS NOT NULL AS posted FROM alert_log")[0]["posted"]


def test_an_unreachable_notifier_does_not_fail_the_code_raising_the_alert(make_settings_app, books):
    app = make_settings_app(alert_webhook_url="http://127.0.0.1:1/unreachable")
    raise_one(app, subject="wallet:w")
    assert books.count("alert_log") == 1
