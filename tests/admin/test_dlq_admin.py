"""Admins review the dead letter queue and resolve each entry with a note: replay (processed again,
credited at most once) or discard."""
import datetime as dt
import uuid
from decimal import Decimal

import pytest

from tests.onramp.support import DRAIN, moonpay_event, park_event, queued_functions, utc
from wallet_api.extensions import db
from wallet_api.onramp.apply_job import process_event

T0 = utc(2026, 11, 28, 12, 0)


@pytest.fixture
def park(app, client):
    """park(payload) -> (dlq entry id, event id): deliver a webhook, then fail every retry until dead-lettered."""
    return lambda payload: park_event(app, client, payload, at=T0)


@pytest.fixture
def lost_purchase(app, user, onramp, services):
    """A completion whose on-ramp row is missing when processed, restored later (the operator's fix)."""
    import psycopg2
    from psycopg2.extras import RealDictCursor

    onramp_id, wallet_id = onramp(user, "ETH")
    # Deleting and restoring rows is the operator's work around the app: as the owner.
    conn = psycopg2.connect(services.owner_url)
    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT * FROM onramp_transactions WHERE id = %s", (str(onramp_id),))
        row = dict(cur.fetchone())
        cur.execute("DELETE FROM onramp_transactions WHERE id = %s", (str(onramp_id),))

    def restore():
        with conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO onramp_transactions ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})",
                        list(row.values()))
        conn.close()

    return dict(onramp_id=onramp_id, wallet_id=wallet_id, user_id=user.id, restore=restore)


def test_dlq_routes_are_for_admins_only(client, user, auth_headers):
    assert client.get("/admin/dlq").status_code == 401
    assert client.get("/admin/dlq", headers=auth_headers(user)).status_code == 403
    res = client.post(f"/admin/dlq/{uuid.uuid4()}/resolve", headers=auth_headers(user),
                      json={"note": "x", "action": "discard"})
    assert res.status_code == 403


def test_the_dlq_lists_unresolved_entries_newest_first_with_a_cursor(client, admin, auth_headers, park, user):
    entries = [park(moonpay_event(onramp_id=uuid.uuid4(), user_id=user.id, moonpay_id=f"mp_{i}"))[0]
               for i in range(3)]
    headers = auth_headers(admin)
    first = client.get("/admin/dlq?limit=2", headers=headers).get_json()
    assert [e["id"] for e in first["items"]] == [str(e) for e in entries[::-1][:2]]
    rest = client.get(f"/admin/dlq?limit=2&cursor={first['next_cursor']}", headers=headers).get_json()
    assert [e["id"] for e in rest["items"]] == [str(entries[0])] and rest["next_cursor"] is None
    item = first["items"][0]
    assert item["status"] == "unresolved" and item["provider"] == "moonpay" and item["external_id"] == "mp_2"
    assert item["attempts"] == 6 and "unknown on-ramp transaction" in item["failure_reason"]
    assert '"quoteCurrencyAmount": 0.05' in item["payload"]  # the body as received, digits intact
    assert client.get("/admin/dlq?status=resolved", headers=headers).get_json() == {"items": [],
                                                                                  "next_cursor": None}


@pytest.mark.parametrize("body, field", [
    ({"action": "replay"}, "note"),
    ({"action": "replay", "note": ""}, "note"),
    ({"note": "looked at it"}, "action"),
    ({"note": "looked at it", "action": "retry"}, "action"),
])
def test_resolving_needs_a_note_and_a_known_action(client, admin, auth_headers, body, field):
    res = client.post(f"/admin/dlq/{uuid.uuid4()}/resolve", headers=auth_headers(admin), json=body)
    assert res.status_code == 422
    assert field in res.get_json()["errors"]["json"]


def test_resolving_an_unknown_entry_is_404(client, admin, auth_headers):
    res = client.post(f"/admin/dlq/{uuid.uuid4()}/resolve", headers=auth_headers(admin),
                      json={"note": "n", "action": "discard"})
    assert res.status_code == 404


def test_discard_closes_the_entry_and_leaves_the_event_parked(client, admin, auth_headers, park, user, books):
    entry, event_id = park(moonpay_event(onramp_id=uuid.uuid4(), user_id=user.id))
    res = client.post(f"/admin/dlq/{entry}/resolve", headers=auth_headers(admin),
                      json={"note": "test transaction from the sandbox", "action": "discard"})
    assert res.status_code == 200
    body = res.get_json()
    assert (body["status"], body["resolution"], body["resolved_by"]) == ("resolved", "discard", str(admin.id))
    assert body["resolution_note"] == "test transaction from the sandbox" and body["resolved_at"]
    assert books.event(event_id)["status"] == "dead_lettered"
    again = client.post(f"/admin/dlq/{entry}/resolve", headers=auth_headers(admin),
                        json={"note": "again", "action": "replay"})
    assert again.status_code == 409
    listed = client.get("/admin/dlq?status=resolved", headers=auth_headers(admin)).get_json()
    assert [e["id"] for e in listed["items"]] == [str(entry)]


def test_replay_resets_the_event_and_credits_exactly_once(client, admin, auth_headers, park, lost_purchase, books,
                                                          run_jobs, redis_client):
    entry, event_id = park(moonpay_event(onramp_id=lost_purchase["onramp_id"], user_id=lost_purchase["user_id"]))
    assert books.credits(lost_purchase["wallet_id"]) == 0
    lost_purchase["restore"]()

    res = client.post(f"/admin/dlq/{entry}/resolve", headers=auth_headers(admin),
                      json={"note": "restored the on-ramp row from backup", "action": "replay"})
    assert res.status_code == 200 and res.get_json()["resolution"] == "replay"
    event = books.event(event_id)
    assert (event["status"], event["attempts"], event["next_attempt_at"]) == ("pending", 0, None)
    assert DRAIN in queued_functions(redis_client)

    run_jobs()
    assert books.balance(lost_purchase["wallet_id"]) == Decimal("0.05")
    assert books.event(event_id)["status"] == "processed"
    assert books.onramp(lost_purchase["onramp_id"])["status"] == "completed"

    # Even a second replay attempt cannot pay twice: the entry is resolved, and the event is processed.
    again = client.post(f"/admin/dlq/{entry}/resolve", headers=auth_headers(admin),
                        json={"note": "again", "action": "replay"})
    assert again.status_code == 409
    run_jobs()
    assert books.credits(lost_purchase["wallet_id"]) == 1


def test_a_replayed_event_that_fails_again_is_parked_again(client, admin, auth_headers, park, user, books, app):
    entry, event_id = park(moonpay_event(onramp_id=uuid.uuid4(), user_id=user.id))
    client.post(f"/admin/dlq/{entry}/resolve", headers=auth_headers(admin), json={"note": "try", "action": "replay"})
    with app.app_context():
        at = T0 + dt.timedelta(days=1)
        outcomes = []
        while not outcomes or outcomes[-1] != "dead_lettered":
            outcomes.append(process_event(event_id=event_id, now=at))
            at += dt.timedelta(hours=2)
        db.session.remove()
    assert len(outcomes) == 6
    rows = books.read("SELECT resolved_at FROM dead_letter_queue WHERE event_id = :e ORDER BY created_at", e=event_id)
    assert len(rows) == 2 and rows[0]["resolved_at"] is not None and rows[1]["resolved_at"] is None
    # The first WEBHOOK_FAILURE alert is still open (the DLQ entry was resolved, not the alert): the second
    # failure is counted on it instead of adding another alert about the same event.
    alerts = books.read("SELECT subject, occurrences, resolved FROM alert_log")
    assert alerts == [{"subject": f"event:{event_id}", "occurrences": 2, "resolved": False}]
