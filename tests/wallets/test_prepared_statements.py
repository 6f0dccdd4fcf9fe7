"""The ledger's statements are prepared once per database connection and then only executed
(wallet_api/prepared_statements.py), or sent as text when DATABASE_PREPARED_STATEMENTS is off."""
import uuid
from decimal import Decimal

import psycopg2
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import ProgrammingError

from wallet_api.extensions import db
from wallet_api.prepared_statements import PreparedStatement, sql_for
from wallet_api.wallets import ledger

LEDGER_STATEMENTS = {"ledger_save_lock_timeout", "ledger_set_lock_timeout", "ledger_lock", "ledger_look_up",
                     "ledger_write"}


@pytest.fixture
def one_connection_app(make_settings_app):
    """An app whose pool holds a single connection: every transaction runs on the same one."""
    def build(**overrides):
        return make_settings_app(db_pool_size=1, db_max_overflow=0, **overrides)
    return build


def move(source, destination, amount="1.00", key=None):
    return ledger.transfer(from_wallet_id=source, to_wallet_id=destination, amount=Decimal(amount),
                           idempotency_key=key or ledger.entry_key(source="test", reference=uuid.uuid4().hex,
                                                                   wallet_id=source, action=ledger.DEBIT))


def prepared_on_server() -> dict[str, int]:
    """`pg_prepared_statements` of the session's connection: name -> times executed."""
    rows = db.session.execute(text(
        "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements")).all()
    db.session.rollback()
    return dict(rows)


@pytest.fixture
def sent():
    """sent(app) -> the list of statements that app sends from now on."""
    def watch(app):
        statements = []
        with app.app_context():
            event.listen(db.engine, "before_cursor_execute",
                         lambda _c, _cur, statement, *_: statements.append(statement))
        return statements
    return watch


def test_each_statement_is_prepared_once_per_connection_then_only_executed(
        one_connection_app, funded_wallet, make_wallet, books, sent):
    app = one_connection_app()
    source, destination = funded_wallet("10.00"), make_wallet()
    statements = sent(app)
    with app.app_context():
        for _ in range(3):
            move(source, destination)
        counts = prepared_on_server()
    assert LEDGER_STATEMENTS <= set(counts)
    assert counts["ledger_write"] == 3 and counts["ledger_lock"] == 3
    prepared = [name for s in statements if s.startswith("PREPARE") for name in LEDGER_STATEMENTS
                if f"PREPARE {name} AS" in s or f"PREPARE {name}(" in s]
    assert sorted(prepared) == sorted(LEDGER_STATEMENTS)  # each once, on first use
    assert sum("EXECUTE ledger_write(" in s for s in statements) == 3
    assert not any("INSERT INTO ledger_entries" in s for s in statements if "PREPARE" not in s)
    assert books.balance(source) == Decimal("7.00") and books.balance(destination) == Decimal("3.00")


def test_switched_off_the_same_sql_is_sent_as_text(one_connection_app, funded_wallet, make_wallet, books, sent):
    app = one_connection_app(database_prepared_statements=False)
    source, destination = funded_wallet("10.00"), make_wallet()
    statements = sent(app)
    key = ledger.entry_key(source="test", reference="once", wallet_id=source, action=ledger.DEBIT)
    with app.app_context():
        first = move(source, destination, "2.50", key=key)
        again = move(source, destination, "2.50", key=key)
        assert prepared_on_server() == {}
    assert not first.replayed and again.replayed and again.transaction_id == first.transaction_id
    assert not any("PREPARE" in s or "EXECUTE" in s for s in statements)
    assert any("INSERT INTO ledger_entries" in s for s in statements)
    assert books.balance(source) == Decimal("7.50") and books.balance(destination) == Decimal("2.50")


def test_a_connection_the_pool_replaced_prepares_them_again(one_connection_app, funded_wallet, make_wallet,
                                                            books, settings):
    app = one_connection_app()
    source, destination = funded_wallet("10.00"), make_wallet()
    with app.app_context():
        move(source, destination)
        pid = db.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        db.session.rollback()
        admin = psycopg2.connect(settings.database_url)  # the same role may end its own sessions
        admin.autocommit = True
        admin.cursor().execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        admin.close()
        move(source, destination)  # the dead connection is found, replaced, and the ledger starts again
        assert db.session.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        db.session.rollback()
        assert LEDGER_STATEMENTS <= set(prepared_on_server())
    assert books.balance(source) == Decimal("8.00")


def test_statements_the_server_already_has_are_not_prepared_twice(one_connection_app, funded_wallet, make_wallet,
                                                                  books):
    app = one_connection_app()
    source, destination = funded_wallet("10.00"), make_wallet()
    with app.app_context():
        move(source, destination)
        db.session.connection().connection.info.clear()  # as if this process had forgotten
        db.session.rollback()
        move(source, destination)  # a second PREPARE of the same name would fail (42P05)
    assert books.balance(source) == Decimal("8.00")


def test_after_a_failed_prepare_the_server_is_asked_again(one_connection_app):
    app = one_connection_app()
    good = PreparedStatement("test_good", "SELECT CAST(%(n)s AS int) + 1 AS n", (("n", "int"),))
    bad = PreparedStatement("test_bad", "SELECT n FROM no_such_table WHERE n = %(n)s", (("n", "int"),))
    with app.app_context():
        connection = db.session.connection()
        with pytest.raises(ProgrammingError):
            sql_for(connection, good, bad)  # test_good is prepared on the server, test_bad is not
        db.session.rollback()
        connection = db.session.connection()
        assert connection.exec_driver_sql(sql_for(connection, good), {"n": 41}).scalar_one() == 42
        db.session.rollback()
        with pytest.raises(ValueError, match="parameters"):
            PreparedStatement("test_undeclared", "SELECT %(n)s")
