"""A dropped database connection is survived: the app has no per-checkout ping, so these prove that
a connection killed by the server (pg_terminate_backend) costs a request nothing, and that only
work that cannot have been written is ever started again (wallet_api/database.py)."""
import uuid
from decimal import Decimal

import psycopg2
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from wallet_api.extensions import db


@pytest.fixture
def terminate(settings):
    """terminate(pid=None): end that backend, or every backend of the app, and wait until it is gone."""
    admin = psycopg2.connect(settings.database_url)
    admin.autocommit = True

    def kill(pid: int | None = None) -> int:
        with admin.cursor() as cur:
            cur.execute("""SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
                           WHERE datname = current_database() AND pid <> pg_backend_pid()
                             AND application_name LIKE 'wallet_api pid=%%' AND (%(pid)s IS NULL OR pid = %(pid)s)""",
                        {"pid": pid})
            return cur.fetchone()[0]

    yield kill
    admin.close()


@pytest.fixture
def kill_after_next_checkout(app, terminate):
    """Arm it, and the next connection the app takes from its pool dies right after the pool's own
    liveness check passed: the request's first statement meets a dead connection."""
    with app.app_context():
        engine = db.engine
    state = {"armed": False, "killed": 0}

    def on_checkout(dbapi_connection, _record, _proxy):
        if state["armed"]:
            state["armed"] = False
            state["killed"] += terminate(dbapi_connection.get_backend_pid())

    event.listen(engine, "checkout", on_checkout)  # after the app's own listener
    yield state
    event.remove(engine, "checkout", on_checkout)


@pytest.fixture
def pair(make_user, funded_wallet, make_wallet):
    sender, recipient = make_user(), make_user()
    return sender, funded_wallet("100.00", user=sender), make_wallet(recipient, "USD")


def transfer(client, headers, source, destination, amount="1.00"):
    return client.post("/transfers", headers=headers, json={
        "from_wallet_id": str(source), "to_wallet_id": str(destination), "amount": amount})


def test_requests_succeed_after_the_server_terminated_every_connection_of_the_app(
        client, auth_headers, pair, terminate, books):
    sender, source, destination = pair
    headers = auth_headers(sender)
    assert client.get("/wallets", headers=headers).status_code == 200  # the pool now holds connections
    assert terminate() >= 1
    assert client.get("/wallets", headers=headers).status_code == 200
    assert terminate() >= 1
    assert transfer(client, headers, source, destination).status_code == 201
    assert terminate() >= 1
    keyed = {**headers, "Idempotency-Key": str(uuid.uuid4())}
    assert client.post("/transfers", headers=keyed, json={
        "from_wallet_id": str(source), "to_wallet_id": str(destination), "amount": "1.00"}).status_code == 201
    assert books.balance(source) == Decimal("98.00") and books.balance(destination) == Decimal("2.00")


def test_a_read_whose_connection_dies_after_checkout_is_retried_on_a_new_one(
        client, auth_headers, pair, kill_after_next_checkout):
    sender, _source, _destination = pair
    kill_after_next_checkout["armed"] = True
    res = client.get("/wallets", headers=auth_headers(sender))
    assert kill_after_next_checkout["killed"] == 1
    assert res.status_code == 200 and len(res.get_json()) == 1


@pytest.mark.parametrize("with_key", [False, True], ids=["plain", "idempotency-key"])
def test_a_transfer_whose_connection_dies_before_commit_is_made_once_on_a_new_connection(
        client, auth_headers, pair, kill_after_next_checkout, books, with_key):
    sender, source, destination = pair
    headers = auth_headers(sender) | ({"Idempotency-Key": str(uuid.uuid4())} if with_key else {})
    kill_after_next_checkout["armed"] = True
    res = transfer(client, headers, source, destination, "3.00")
    assert kill_after_next_checkout["killed"] == 1
    assert res.status_code == 201, res.get_json()
    assert books.balance(source) == Decimal("97.00") and books.balance(destination) == Decimal("3.00")


def test_a_connection_lost_in_the_middle_of_a_transaction_is_not_retried(app_ctx, terminate):
    db.session.execute(text("SELECT 1"))  # the transaction has done work that a retry would lose
    pid = db.session.connection().connection.dbapi_connection.get_backend_pid()
    assert terminate(pid) == 1
    with pytest.raises(OperationalError):
        db.session.execute(text("SELECT 1"))
    db.session.rollback()
    assert db.session.execute(text("SELECT 1")).scalar_one() == 1  # the next transaction reconnects


def test_the_pool_replaces_connections_the_server_closed_while_they_were_idle(app_ctx, terminate):
    with db.engine.connect() as first, db.engine.connect() as second:  # two pooled connections
        pids = {c.execute(text("SELECT pg_backend_pid()")).scalar_one() for c in (first, second)}
    assert terminate() >= 2
    # A bare engine connection has no retry: only the checkout's liveness check can save it.
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() not in pids


def test_each_connection_names_the_process_that_opened_it(app):
    import os

    from sqlalchemy import text

    from wallet_api.extensions import db

    with app.app_context():
        db.engine.dispose()  # a connection opened by this process now
        name = db.session.execute(text(
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")).scalar_one()
        db.session.rollback()
    assert name == f"wallet_api pid={os.getpid()}"
