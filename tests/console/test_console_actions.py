"""Every console action goes through the same service function as its admin API route and lands in
the admin access log, written by the action's own commit; refusals are answered with their status
and recorded with it."""
import uuid
from decimal import Decimal

import psycopg2
import pytest
from psycopg2.extras import RealDictCursor

from tests.console.conftest import csrf_token, post_form, sign_in
from tests.onramp.support import DRAIN, moonpay_event, queued_functions
from wallet_api.alerts import service as alerts
from wallet_api.jobs import service as jobs
from wallet_api.onramp import dead_letters


@pytest.fixture
def spy(monkeypatch):
    """spy(module, name) -> the list of keyword arguments of every call (the real function still runs)."""

    def watch(module, name):
        calls, real = [], getattr(module, name)

        def wrapper(**kwargs):
            calls.append(kwargs)
            return real(**kwargs)

        monkeypatch.setattr(module, name, wrapper)
        return calls

    return watch


def test_every_console_view_is_audited(app):
    views = {endpoint: view for endpoint, view in app.view_functions.items() if endpoint.startswith("console.")}
    assert len(views) >= 17
    for endpoint, view in views.items():
        assert getattr(view, "audited", False), f"{endpoint} is not @audited"


def test_every_console_request_is_recorded_with_the_operator(operator, admin, access_records):
    operator.get("/console/wallets?q=nobody@example.com")
    rows = access_records()
    assert [(r["action"], r["status_code"]) for r in rows] == [("console.login_form", 200), ("console.login", 303),
                                                               ("console.wallets_list", 404)]
    assert rows[0]["actor_id"] is None  # not signed in yet
    assert all(r["actor_id"] == admin.id and r["actor_role"] == "ADMIN" for r in rows[1:])
    assert rows[2]["metadata"] == {"query": {"q": "nobody@example.com"}}


def test_the_password_never_reaches_the_access_log(client, admin, access_records):
    client.post("/console/login", data={"email": admin.email, "password": "hunter2-wrong",
                                        "csrf_token": csrf_token(client)})
    (login,) = [r for r in access_records() if r["action"] == "console.login"]
    assert login["status_code"] == 401 and login["actor_id"] is None
    assert login["metadata"]["form"] == {"email": admin.email, "password": "[redacted]"}
    assert "hunter2" not in str(login["metadata"])


def test_resolving_an_alert_calls_resolve_alert_and_is_recorded_by_its_commit(operator, admin, alert_id, books,
                                                                              spy, access_records):
    calls = spy(alerts, "resolve_alert")
    res = post_form(operator, f"/console/alerts/{alert_id}/resolve", {"note": "  cache rewritten  "},
                    token_from=f"/console/alerts/{alert_id}")
    assert res.status_code == 303 and res.headers["Location"] == f"/console/alerts/{alert_id}"
    assert calls == [{"alert_id": alert_id, "admin_id": admin.id, "note": "  cache rewritten  "}]
    row = books.read("SELECT resolved, resolved_by, resolution_note FROM alert_log")[0]
    assert row == {"resolved": True, "resolved_by": admin.id, "resolution_note": "cache rewritten"}
    page = operator.get(f"/console/alerts/{alert_id}").get_data(as_text=True)
    assert "Alert resolved." in page and admin.email in page and "cache rewritten" in page
    (record,) = [r for r in access_records() if r["action"] == "console.resolve_alert"]
    assert (record["actor_id"], record["target_id"], record["status_code"], record["method"]) == \
        (admin.id, str(alert_id), 303, "POST")
    assert record["metadata"] == {"form": {"note": "  cache rewritten  "}}


@pytest.mark.parametrize("note", ["", "   ", "x" * 2001])
def test_an_alert_needs_a_note(operator, alert_id, books, note, access_records):
    res = post_form(operator, f"/console/alerts/{alert_id}/resolve", {"note": note})
    assert res.status_code == 422
    assert books.read("SELECT resolved FROM alert_log")[0]["resolved"] is False
    assert [r["status_code"] for r in access_records() if r["action"] == "console.resolve_alert"] == [422]


def test_resolving_twice_is_a_conflict_shown_on_the_page(operator, alert_id, access_records):
    assert post_form(operator, f"/console/alerts/{alert_id}/resolve", {"note": "done"}).status_code == 303
    again = post_form(operator, f"/console/alerts/{alert_id}/resolve", {"note": "again"})
    assert again.status_code == 409 and "already resolved" in again.get_data(as_text=True)
    assert post_form(operator, f"/console/alerts/{uuid.uuid4()}/resolve", {"note": "x"}).status_code == 404
    assert [r["status_code"] for r in access_records() if r["action"] == "console.resolve_alert"] == [303, 409, 404]


def test_replaying_a_dead_letter_calls_resolve_dlq_and_credits_once(operator, admin, app, user, onramp, park,
                                                                    services, books, spy, run_jobs, redis_client,
                                                                    access_records):
    onramp_id, wallet_id = onramp(user, "ETH")
    conn = psycopg2.connect(services.owner_url)
    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT * FROM onramp_transactions WHERE id = %s", (str(onramp_id),))
        row = dict(cur.fetchone())
        cur.execute("DELETE FROM onramp_transactions WHERE id = %s", (str(onramp_id),))
    entry, event_id = park(moonpay_event(onramp_id=onramp_id, user_id=user.id))
    with conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO onramp_transactions ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})",
                    list(row.values()))
    conn.close()
    run_jobs()  # the delivery's own drain job: nothing left to do for a dead-lettered event
    calls = spy(dead_letters, "resolve_dlq")

    res = post_form(operator, f"/console/dlq/{entry}/resolve", {"action": "replay", "note": "row restored"})
    assert res.status_code == 303 and res.headers["Location"] == f"/console/dlq/{entry}"
    assert calls == [{"entry_id": entry, "action": "replay", "note": "row restored", "admin_id": admin.id}]
    assert books.event(event_id)["status"] == "pending" and DRAIN in queued_functions(redis_client)
    run_jobs()
    assert books.balance(wallet_id) == Decimal("0.05") and books.credits(wallet_id) == 1
    page = operator.get(f"/console/dlq/{entry}").get_data(as_text=True)
    assert "Replayed" in page and "row restored" in page and admin.email in page
    again = post_form(operator, f"/console/dlq/{entry}/resolve", {"action": "replay", "note": "again"})
    assert again.status_code == 409
    run_jobs()
    assert books.credits(wallet_id) == 1
    assert [r["status_code"] for r in access_records() if r["action"] == "console.resolve_dead_letter"] == [303, 409]


def test_discarding_a_dead_letter_leaves_its_event_parked(operator, park, user, books):
    entry, event_id = park(moonpay_event(onramp_id=uuid.uuid4(), user_id=user.id))
    res = post_form(operator, f"/console/dlq/{entry}/resolve", {"action": "discard", "note": "sandbox noise"})
    assert res.status_code == 303
    assert books.event(event_id)["status"] == "dead_lettered"
    assert books.read("SELECT resolution, resolution_note FROM dead_letter_queue")[0] == \
        {"resolution": "discard", "resolution_note": "sandbox noise"}


@pytest.mark.parametrize("form, field", [({"note": "n"}, "action"), ({"action": "replay"}, "note"),
                                         ({"action": "retry", "note": "n"}, "action")])
def test_a_dead_letter_needs_an_action_and_a_note(operator, park, user, books, form, field):
    entry, _ = park(moonpay_event(onramp_id=uuid.uuid4(), user_id=user.id))
    res = post_form(operator, f"/console/dlq/{entry}/resolve", form)
    assert res.status_code == 422 and field in res.get_data(as_text=True)
    assert books.read("SELECT resolved_at FROM dead_letter_queue")[0]["resolved_at"] is None


def test_running_a_job_calls_request_run_and_queues_it(operator, admin, books, spy, redis_client, access_records):
    calls = spy(jobs, "request_run")
    res = post_form(operator, "/console/jobs/webhook-retry/run", token_from="/console/jobs")
    assert res.status_code == 303 and res.headers["Location"] == "/console/jobs/webhook-retry"
    assert calls == [{"name": "webhook-retry", "requested_by": admin.id}]
    run = books.read("SELECT * FROM job_runs")[0]
    assert (run["job_name"], run["trigger"], run["status"], run["requested_by"]) == \
        ("webhook-retry", "manual", "queued", admin.id)
    assert "worker.jobs.webhook_retry" in queued_functions(redis_client, "default")
    page = operator.get("/console/jobs/webhook-retry").get_data(as_text=True)
    assert f"Run {run['id']} of webhook-retry is queued" in page and "queued" in page
    (record,) = [r for r in access_records() if r["action"] == "console.run_job"]
    assert (record["target_id"], record["status_code"]) == ("webhook-retry", 303)


def test_running_an_unknown_job_is_404(operator, books):
    assert post_form(operator, "/console/jobs/no-such-job/run").status_code == 404
    assert books.count("job_runs") == 0


def test_a_job_whose_queue_is_down_is_refused_with_503(make_settings_app, admin, books):
    app = make_settings_app(redis_url="redis://127.0.0.1:1/0")
    client = app.test_client()
    assert sign_in(client, admin).status_code == 303
    res = post_form(client, "/console/jobs/webhook-retry/run", token_from="/console/jobs")
    assert res.status_code == 503 and "unavailable" in res.get_data(as_text=True)
    assert books.read("SELECT status FROM job_runs")[0]["status"] == "failed"


def test_signing_in_and_out_are_recorded(operator, admin, access_records):
    post_form(operator, "/console/logout")
    rows = [(r["action"], r["actor_id"], r["status_code"]) for r in access_records()
            if r["action"] in ("console.login", "console.logout")]
    assert rows == [("console.login", admin.id, 303), ("console.logout", admin.id, 303)]
