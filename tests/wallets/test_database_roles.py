"""Least privilege, proven: the test suite runs as the application's restricted role, which can read
and append but cannot rewrite, delete or truncate the books, own a table, or switch triggers off,
even with the test suite's own truncate flag set."""
import psycopg2
import pytest
from psycopg2 import errors
from sqlalchemy import inspect

from wallet_api.db_roles import APP_PRIVILEGES, APPEND_ONLY, role_problems
from wallet_api.extensions import db


@pytest.fixture
def as_app(services, app, funded_wallet):
    funded_wallet("10.00")  # a ledger with rows in it
    conn = psycopg2.connect(services.app_url)
    yield conn
    conn.rollback()
    conn.close()


@pytest.mark.parametrize("statement", [
    "UPDATE ledger_entries SET amount = amount * 2",
    "DELETE FROM ledger_entries",
    "UPDATE ledger_transactions SET amount = 1000",
    "DELETE FROM ledger_transactions",
    "TRUNCATE ledger_entries CASCADE",
    "TRUNCATE ledger_transactions CASCADE",
    "TRUNCATE wallets CASCADE",
    "UPDATE balance_corrections SET balance_after = 0",
    "DELETE FROM admin_access_log",
    "ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only",
    "ALTER TABLE ledger_entries DISABLE TRIGGER ALL",
    "DROP TRIGGER ledger_entries_append_only ON ledger_entries",
    "ALTER TABLE wallets DROP CONSTRAINT ck_wallets_user_balance_non_negative",
    "SET session_replication_role = replica",
    "CREATE TABLE ledger_shadow (id int)",
])
def test_the_application_role_cannot_rewrite_the_books_even_with_the_truncate_flag(as_app, statement):
    cur = as_app.cursor()
    cur.execute("SET wallet.allow_ledger_truncate = on")
    with pytest.raises((errors.InsufficientPrivilege, errors.UndefinedObject)) as refused:
        cur.execute(statement)
    assert "permission denied" in str(refused.value) or "must be owner" in str(refused.value)


def test_the_application_role_has_exactly_its_grant(services, app):
    conn = psycopg2.connect(services.app_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name, privilege_type FROM information_schema.role_table_grants "
                        "WHERE grantee = current_user AND table_schema = 'public'")
            granted: dict[str, set[str]] = {}
            for table, privilege in cur.fetchall():
                granted.setdefault(table, set()).add(privilege)
    finally:
        conn.close()
    assert granted == {table: set(privileges) for table, privileges in APP_PRIVILEGES.items()}


def test_every_table_has_a_grant_and_the_books_are_append_only(app_ctx):
    tables = set(inspect(db.engine).get_table_names())
    assert tables == set(APP_PRIVILEGES), "a new table needs its entry in wallet_api/db_roles.APP_PRIVILEGES"
    assert {"ledger_transactions", "ledger_entries", "balance_corrections", "admin_access_log"} <= set(APPEND_ONLY)


def test_the_role_check_passes_the_application_role_and_flags_the_others(services, app):
    from sqlalchemy import create_engine

    found = {}
    for who in ("app_url", "owner_url", "superuser_url"):
        engine = create_engine(getattr(services, who).replace("postgresql://", "postgresql+psycopg2://", 1))
        with engine.connect() as connection:
            found[who] = role_problems(connection)
        engine.dispose()
    assert found["app_url"] == []
    assert any("owns tables" in problem for problem in found["owner_url"])
    assert any("has TRUNCATE on ledger_entries" in problem for problem in found["owner_url"])
    assert any("superuser" in problem for problem in found["superuser_url"])
