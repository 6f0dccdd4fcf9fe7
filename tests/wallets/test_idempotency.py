"""The Idempotency-Key header on POST /transfers (Stripe's model), through real requests and connections."""
import datetime as dt
import json
import threading
import uuid
from decimal import Decimal

import psycopg2
import pytest
from sqlalchemy import text

from tests.wallets.conftest import run_concurrently
from tests.wallets.test_ledger import wait_until_blocked
from wallet_api.extensions import db
from wallet_api import idempotency


@pytest.fixture
def pair(make_user, funded_wallet, make_wallet):
    sender = make_user()
    return sender, funded_wallet("100.00", user=sender), make_wallet()


def transfer(client, headers, source, destination, amount="10.00", key=None, **extra):
    if key is not None:
        headers = {**headers, "Idempotency-Key": key}
    return client.post("/transfers", headers=headers, json={
        "from_wallet_id": str(source), "to_wallet_id": str(destination), "amount": amount, **extra})


def test_the_same_key_and_body_replays_the_first_response(client, auth_headers, pair, books):
    sender, source, destination = pair
    first = transfer(client, auth_headers(sender), source, destination, key="order-1")
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = transfer(client, auth_headers(sender), source, destination, key="order-1")
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert books.balance(source) == Decimal("90.00") and books.count("ledger_transactions") == 2


def test_key_order_and_spacing_of_the_json_body_do_not_matter(client, auth_headers, pair, books):
    sender, source, destination = pair
    headers = {**auth_headers(sender), "Idempotency-Key": "k-canonical", "Content-Type": "application/json"}
    a = client.post("/transfers", headers=headers,
                    data=f'{{"from_wallet_id": "{source}", "to_wallet_id": "{destination}", "amount": "1.00"}}')
    b = client.post("/transfers", headers=headers,
                    data=f'{{"amount":"1.00","to_wallet_id":"{destination}",\n "from_wallet_id":"{source}"}}')
    assert a.status_code == b.status_code == 201 and b.headers["Idempotent-Replayed"] == "true"
    assert books.balance(source) == Decimal("99.00")


def test_the_same_key_with_another_body_is_422(client, auth_headers, pair, books):
    sender, source, destination = pair
    transfer(client, auth_headers(sender), source, destination, "10.00", key="order-2")
    res = transfer(client, auth_headers(sender), source, destination, "11.00", key="order-2")
    assert res.status_code == 422 and res.get_json()["error"] == "idempotency_key_reused"
    assert books.balance(source) == Decimal("90.00")


def test_an_in_flight_key_is_409(app, client, auth_headers, pair):
    sender, source, destination = pair
    body = {"from_wallet_id": str(source), "to_wallet_id": str(destination), "amount": "10.00"}
    with app.app_context():
        fp = idempotency.fingerprint("POST", "/transfers", json.dumps(body).encode())
        db.session.execute(text("""INSERT INTO idempotency_keys (id, user_id, key, method, path, fingerprint, status,
                                   expires_at) VALUES (gen_random_uuid(), :u, 'order-3', 'POST', '/transfers', :fp,
                                   'in_flight', now() + interval '1 day')"""), {"u": sender.id, "fp": fp})
        db.session.commit()
    res = transfer(client, auth_headers(sender), source, destination, key="order-3")
    assert res.status_code == 409 and res.get_json()["error"] == "idempotency_key_in_flight"
    assert res.headers["Retry-After"] == "1"


def test_a_request_still_running_holds_its_key_then_completes(app, settings, auth_headers, pair, books):
    sender, source, destination = pair
    holder = psycopg2.connect(settings.database_url)
    holder.cursor().execute("SELECT 1 FROM wallets WHERE id = %s FOR UPDATE", (str(destination),))
    outcome = {}

    def first_request():
        outcome["first"] = transfer(app.test_client(), auth_headers(sender), source, destination, key="order-4")

    worker = threading.Thread(target=first_request)
    worker.start()
    try:
        # the first request has claimed the key and waits for the lock
        wait_until_blocked(settings, "EXECUTE ledger_lock")
        second = transfer(app.test_client(), auth_headers(sender), source, destination, key="order-4")
        assert second.status_code == 409 and second.get_json()["error"] == "idempotency_key_in_flight"
    finally:
        holder.rollback()
        holder.close()
        worker.join(10)
    assert outcome["first"].status_code == 201
    third = transfer(app.test_client(), auth_headers(sender), source, destination, key="order-4")
    assert third.headers["Idempotent-Replayed"] == "true" and third.get_json() == outcome["first"].get_json()
    assert books.balance(destination) == Decimal("10.00")


def test_keys_are_scoped_to_the_user(client, auth_headers, make_user, funded_wallet, make_wallet, books):
    alice, bob = make_user(), make_user()
    a_wallet, b_wallet, target = funded_wallet("50.00", user=alice), funded_wallet("50.00", user=bob), make_wallet()
    first = transfer(client, auth_headers(alice), a_wallet, target, "5.00", key="shared-key")
    second = transfer(client, auth_headers(bob), b_wallet, target, "5.00", key="shared-key")
    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in second.headers and second.get_json()["id"] != first.get_json()["id"]
    assert books.balance(target) == Decimal("10.00")


def test_a_failed_request_releases_its_key_for_a_retry(client, auth_headers, pair, fund, books):
    sender, source, destination = pair
    short = transfer(client, auth_headers(sender), source, destination, "150.00", key="order-5")
    assert short.status_code == 422 and books.count("idempotency_keys") == 0
    invalid = transfer(client, auth_headers(sender), source, destination, "1e3", key="order-5")
    assert invalid.status_code == 422 and books.count("idempotency_keys") == 0
    fund(source, "50.00")
    ok = transfer(client, auth_headers(sender), source, destination, "150.00", key="order-5")
    assert ok.status_code == 201 and books.balance(destination) == Decimal("150.00")


def test_an_expired_key_may_be_used_for_a_new_request(app, client, auth_headers, pair, books):
    sender, source, destination = pair
    transfer(client, auth_headers(sender), source, destination, "10.00", key="order-6")
    with app.app_context():
        db.session.execute(text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"))
        db.session.commit()
    res = transfer(client, auth_headers(sender), source, destination, "20.00", key="order-6")
    assert res.status_code == 201 and "Idempotent-Replayed" not in res.headers
    assert books.balance(destination) == Decimal("30.00")
    with app.app_context():
        assert idempotency.purge_expired(now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)) == 1


def test_a_key_abandoned_by_a_dead_process_is_taken_over_without_moving_money_twice(app, client, auth_headers,
                                                                                   pair, books):
    sender, source, destination = pair
    first = transfer(client, auth_headers(sender), source, destination, key="order-7")
    # The process died after the ledger commit, before storing the response: the row is still in flight.
    with app.app_context():
        db.session.execute(text("UPDATE idempotency_keys SET status = 'in_flight', response_code = NULL, "
                                "response_body = NULL, created_at = now() - interval '10 minutes'"))
        db.session.commit()
    retry = transfer(client, auth_headers(sender), source, destination, key="order-7")
    assert retry.status_code == 201 and retry.get_json()["id"] == first.get_json()["id"]
    assert books.balance(destination) == Decimal("10.00") and books.count("ledger_transactions") == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there", "nul\x01"])
def test_a_malformed_key_is_400(client, auth_headers, pair, key, books):
    sender, source, destination = pair
    res = transfer(client, auth_headers(sender), source, destination, key=key)
    assert res.status_code == 400 and res.get_json()["error"] == "invalid_idempotency_key"
    assert "printable ASCII" in res.get_json()["message"]
    assert books.count("ledger_transactions") == 1


def test_a_255_character_key_is_fine(client, auth_headers, pair):
    sender, source, destination = pair
    assert transfer(client, auth_headers(sender), source, destination, key="k" * 255).status_code == 201


def test_without_a_key_every_request_is_a_new_transfer(client, auth_headers, pair, books):
    sender, source, destination = pair
    assert transfer(client, auth_headers(sender), source, destination).status_code == 201
    assert transfer(client, auth_headers(sender), source, destination).status_code == 201
    assert books.balance(destination) == Decimal("20.00")


@pytest.mark.slow
def test_50_concurrent_requests_with_one_key_move_money_once(app, auth_headers, pair, books):
    sender, source, destination = pair
    headers = {**auth_headers(sender), "Idempotency-Key": "burst-" + uuid.uuid4().hex}
    body = {"from_wallet_id": str(source), "to_wallet_id": str(destination), "amount": "10.00"}
    jobs = [lambda: app.test_client().post("/transfers", headers=headers, json=body)] * 50
    outcomes = run_concurrently(app, jobs, workers=25)
    assert [exc for _, exc in outcomes if exc] == []
    statuses = [res.status_code for res, _ in outcomes]
    assert set(statuses) <= {201, 409}, statuses
    created = [res for res, _ in outcomes if res.status_code == 201]
    assert len({res.get_json()["id"] for res in created}) == 1
    assert sum(1 for res in created if "Idempotent-Replayed" not in res.headers) == 1
    assert books.balance(destination) == Decimal("10.00") and books.balance(source) == Decimal("90.00")
    assert books.count("ledger_transactions") == 2
