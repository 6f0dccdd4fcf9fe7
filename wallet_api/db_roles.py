"""Least privilege in PostgreSQL: what the application's role may do to each table, and nothing more.

Two roles (docs/SECRETS_AND_ACCESS_CONTROL.md):
- the owner (MIGRATION_DATABASE_URL) owns the schema and runs the migrations: the release phase
  and `flask db upgrade`;
- the application (DATABASE_URL: web, workers, scheduler, CLI) may only read and append, and
  update the few tables whose rows have a life cycle. It cannot UPDATE, DELETE or TRUNCATE ledger
  rows (or any audit row), cannot own a table, so it cannot disable a trigger or drop a
  constraint, and cannot set `session_replication_role` (superuser only). A bug, or an attacker
  holding the application's credentials, cannot rewrite the books.

`APP_PRIVILEGES` is the whole grant; migrations apply it with `grant_app_privileges` (so a new
table gets its grant in the migration that creates it), `/ready` checks the live role against it,
and a test compares it with the tables the models define.
"""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

READ_APPEND = ("SELECT", "INSERT")
LIFE_CYCLE = ("SELECT", "INSERT", "UPDATE")

APP_PRIVILEGES: dict[str, tuple[str, ...]] = {
    # the books: append-only
    "ledger_transactions": READ_APPEND,
    "ledger_entries": READ_APPEND,
    "balance_corrections": READ_APPEND,
    "admin_access_log": READ_APPEND,
    # rows with a life cycle
    "users": LIFE_CYCLE,                   # role promotion, password rehash
    "refresh_tokens": LIFE_CYCLE,          # used_at, revoked_at
    "wallets": LIFE_CYCLE,                 # the cached balance (ledger only), needs_reconciliation
    "onramp_transactions": LIFE_CYCLE,
    "webhook_events": LIFE_CYCLE,
    "dead_letter_queue": LIFE_CYCLE,
    "alert_log": LIFE_CYCLE,
    "job_runs": LIFE_CYCLE,
    "idempotency_keys": (*LIFE_CYCLE, "DELETE"),  # released on failure, purged on expiry
    # read-only
    "alembic_version": ("SELECT",),        # /ready compares it with the code's head
}
# Never granted to the application on any table.
FORBIDDEN = ("TRUNCATE", "REFERENCES", "TRIGGER")
# On these, UPDATE and DELETE are forbidden too.
APPEND_ONLY = tuple(table for table, granted in APP_PRIVILEGES.items() if granted == READ_APPEND)


def grant_app_privileges(connection: Connection, app_role: str) -> list[str]:
    """Grant `app_role` exactly APP_PRIVILEGES on the tables that exist now; returns what was granted.

    Idempotent: privileges beyond the list are revoked first. Run as the tables' owner.
    """
    role = _quoted(connection, app_role)
    existing = set(connection.execute(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars())
    granted = []
    connection.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
    for table, privileges in APP_PRIVILEGES.items():
        if table not in existing:
            continue
        connection.execute(text(f'REVOKE ALL ON TABLE "{table}" FROM {role}'))
        connection.execute(text(f'GRANT {", ".join(privileges)} ON TABLE "{table}" TO {role}'))
        granted.append(table)
    # Identity columns draw from sequences owned by their table: USAGE lets the role insert, SELECT lets
    # the daily backup (pg_dump, run by a worker as this role) read their position.
    connection.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    return granted


def role_problems(connection: Connection) -> list[str]:
    """What is unsafe about the role this connection uses, by the rules above (empty when safe)."""
    problems = []
    role = connection.execute(text(
        "SELECT rolname, rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = current_user")).one()
    if role.rolsuper:
        problems.append(f"connected as superuser {role.rolname}")
    if role.rolcreaterole:
        problems.append(f"role {role.rolname} can create roles")
    owned = connection.execute(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tableowner = current_user "
        "ORDER BY tablename")).scalars().all()
    if owned:
        problems.append(f"role {role.rolname} owns tables ({', '.join(owned[:5])}{'...' if len(owned) > 5 else ''})")
    rows = connection.execute(text("""
        SELECT table_name, privilege_type FROM information_schema.role_table_grants
        WHERE grantee = current_user AND table_schema = current_schema()""")).all()
    for table, privilege in rows:
        if privilege in FORBIDDEN or (table in APPEND_ONLY and privilege in ("UPDATE", "DELETE")):
            problems.append(f"role {role.rolname} has {privilege} on {table}")
    return problems


def _quoted(connection: Connection, identifier: str) -> str:
    return connection.execute(text("SELECT quote_ident(:i)"), {"i": identifier}).scalar_one()
