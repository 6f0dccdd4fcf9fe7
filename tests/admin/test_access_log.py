"""Every request to the admin area is in the append-only access log, allowed or refused: who, which
action, on what, with which arguments (never secrets), from which client address, and the status;
an action that commits is recorded in its own transaction."""
import datetime as dt
import uuid

import psycopg2
import pytest

from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import raise_alert
from wallet_api.extensions import db


def records(books):
    return books.read("SELECT * FROM admin_access_log ORDER BY created_at, id")


@pytest.fixture
def alert_id(app):
    with app.app_context():
        found = raise_alert(alert_type=AlertType.JOB_CRASH, subject="job:x", title="t", message="m")
        db.session.commit()
        db.session.remove()
    return found


def test_an_allowed_action_is_recorded_with_who_what_target_and_status(client, admin, auth_headers, alert_id, books):
    res = client.post(f"/admin/alerts/{alert_id}/resolve", headers={**auth_headers(admin), "User-Agent": "ops/1.0"},
                      json={"note": "the job was rerun"})
    assert res.status_code == 200
    (row,) = records(books)
    assert (row["actor_id"], row["actor_role"], row["action"], row["method"], row["target_id"], row["status_code"]) == \
        (admin.id, "ADMIN", "admin.ResolveAlert", "POST", str(alert_id), 200)
    assert row["ip"] == "127.0.0.1" and row["user_agent"] == "ops/1.0"
    assert row["metadata"] == {"body": {"note": "the job was rerun"}}
    assert row["request_id"] == res.headers["X-Request-ID"]


def test_a_committed_action_and_its_record_share_one_transaction(client, admin, auth_headers, funded_wallet, books):
    wallet = funded_wallet("5.00")
    res = client.post(f"/admin/wallets/{wallet}/credit", headers=auth_headers(admin),
                      json={"amount": "1.00", "reason": "goodwill"})
    assert res.status_code == 201
    (row,) = records(books)
    credited_at = books.read("SELECT created_at FROM ledger_transactions WHERE id = :i", i=res.get_json()["id"])
    # now() is the transaction's start: equal times mean the record was written by the action's own commit.
    assert row["created_at"] == credited_at[0]["created_at"] and row["status_code"] == 201


@pytest.mark.parametrize("who, status", [("anonymous", 401), ("user", 403)])
def test_refused_calls_are_recorded_too(client, user, auth_headers, alert_id, books, who, status):
    headers = auth_headers(user) if who == "user" else {}
    assert client.post(f"/admin/alerts/{alert_id}/resolve", headers=headers, json={"note": "x"}).status_code == status
    (row,) = records(books)
    assert row["status_code"] == status and row["action"] == "admin.ResolveAlert"
    assert row["actor_id"] == (user.id if who == "user" else None)
    assert books.read("SELECT resolved FROM alert_log")[0]["resolved"] is False


def test_failed_and_invalid_actions_are_recorded_with_their_status(client, admin, auth_headers, alert_id, books):
    headers = auth_headers(admin)
    client.post(f"/admin/alerts/{uuid.uuid4()}/resolve", headers=headers, json={"note": "x"})
    client.post(f"/admin/alerts/{alert_id}/resolve", headers=headers, json={})
    client.post(f"/admin/alerts/{alert_id}/resolve", headers=headers, json={"note": "done"})
    client.post(f"/admin/alerts/{alert_id}/resolve", headers=headers, json={"note": "again"})
    assert [r["status_code"] for r in records(books)] == [404, 422, 200, 409]


def test_rate_limited_admin_calls_are_recorded(make_settings_app, admin, auth_headers, books):
    from wallet_api.config import RateLimits

    app = make_settings_app(ratelimit_enabled=True, rate_limits=RateLimits(admin="1/minute"))
    client = app.test_client()
    codes = [client.get("/admin/jobs", headers=auth_headers(admin)).status_code for _ in range(2)]
    assert codes == [200, 429]
    assert [r["status_code"] for r in records(books)] == [200, 429]


def test_secrets_never_reach_the_record(client, admin, auth_headers, alert_id, books):
    client.post(f"/admin/alerts/{alert_id}/resolve?token=abc", headers=auth_headers(admin),
                json={"note": "x" * 500, "password": "hunter2", "api_key": "sk_live_1"})
    meta = records(books)[0]["metadata"]
    assert meta["query"] == {"token": "[redacted]"}
    assert meta["body"]["password"] == meta["body"]["api_key"] == "[redacted]"
    assert len(meta["body"]["note"]) == 203 and "hunter2" not in str(meta)


def test_the_client_address_is_the_one_the_trusted_proxy_saw(make_settings_app, admin, auth_headers, books):
    app = make_settings_app(trusted_proxy_count=1)
    app.test_client().get("/admin/jobs", headers={**auth_headers(admin), "X-Forwarded-For": "6.6.6.6, 203.0.113.7"})
    assert records(books)[0]["ip"] == "203.0.113.7"


def test_admins_read_the_log_filtered_and_paginated(client, admin, make_user, auth_headers, alert_id, books):
    other_admin = make_user(role="ADMIN")
    client.get("/admin/jobs", headers=auth_headers(admin))
    client.get(f"/admin/alerts/{alert_id}", headers=auth_headers(other_admin))
    client.get("/admin/jobs", headers=auth_headers(other_admin))
    headers = auth_headers(admin)
    mine = client.get(f"/admin/access-log?admin_id={other_admin.id}", headers=headers).get_json()["items"]
    assert [(r["action"], r["admin_id"]) for r in mine] == [("admin.Jobs", str(other_admin.id)),
                                                          ("admin.AlertById", str(other_admin.id))]
    by_action = client.get("/admin/access-log?action=admin.Jobs&limit=1", headers=headers).get_json()
    assert len(by_action["items"]) == 1 and by_action["next_cursor"]
    target = client.get(f"/admin/access-log?target={alert_id}", headers=headers).get_json()["items"]
    assert [r["action"] for r in target] == ["admin.AlertById"]
    later = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)).isoformat()
    assert client.get("/admin/access-log", headers=headers, query_string={"since": later}).get_json()["items"] == []
    assert client.get("/admin/access-log", headers=auth_headers(make_user())).status_code == 403


@pytest.mark.parametrize("who, refusal", [("app_url", "permission denied"), ("owner_url", "append-only")])
def test_the_log_is_append_only(client, admin, auth_headers, services, books, who, refusal):
    client.get("/admin/jobs", headers=auth_headers(admin))
    conn = psycopg2.connect(getattr(services, who))
    try:
        for statement in ("UPDATE admin_access_log SET status_code = 200", "DELETE FROM admin_access_log"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege, match=refusal):
                with conn, conn.cursor() as cur:
                    cur.execute(statement)
    finally:
        conn.close()


def test_every_admin_view_is_audited(app):
    admin_views = {endpoint: view for endpoint, view in app.view_functions.items() if endpoint.startswith("admin.")}
    assert len(admin_views) >= 12
    for endpoint, view in admin_views.items():
        for method in ("get", "post", "put", "patch", "delete"):
            handler = getattr(view.view_class, method, None)
            if handler is not None:
                assert getattr(handler, "audited", False), f"{endpoint} {method.upper()} is not @audited"
