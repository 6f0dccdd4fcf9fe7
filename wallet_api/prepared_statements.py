"""Server-side prepared statements for the hottest SQL, over psycopg2's simple protocol.

psycopg2 sends every statement as text, so PostgreSQL parses, analyses and plans it on every call:
for the ledger's two round trips that took more of PostgreSQL's CPU than executing them (prepared,
its CPU per transfer fell by about a third: docs/PERFORMANCE.md, third pass, item 12). A statement declared here is
PREPAREd once per database connection, on its first use there, in a round trip of its own, and
then sent as `EXECUTE name(...)`: PostgreSQL plans it a few times, then keeps a generic plan.
Several EXECUTEs still travel in one multi-statement string, so no round trip is added.

- The connection remembers what it has prepared in SQLAlchemy's per-DBAPI-connection `info`
  dictionary, which is cleared when the pool replaces the connection (a new server session has
  no prepared statements either). Its first use reads `pg_prepared_statements`, and a failed
  PREPARE makes the next use read it again, so a statement is never prepared twice.
- PREPARE is not transactional: a statement prepared in a transaction that rolls back stays.
- Privileges are checked when a prepared statement runs, not when it is prepared, and a schema
  change makes PostgreSQL re-plan it.
- A transaction-mode pooler (PgBouncer) hands each transaction to any server connection, where
  the statement may not exist: set DATABASE_PREPARED_STATEMENTS=false behind one (docs/SCALING.md),
  and the same SQL is sent as plain text instead.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from flask import current_app
from sqlalchemy.engine import Connection

_PARAMETER = re.compile(r"%\((\w+)\)s")
_PREPARED_KEY = "wallet_api.prepared_statements"
_LIST = "SELECT name FROM pg_prepared_statements"


@dataclass(frozen=True)
class PreparedStatement:
    """One statement: `sql` with psycopg2's %(name)s parameters, and each parameter's type."""

    name: str
    sql: str
    types: tuple[tuple[str, str], ...] = ()  # (parameter, PostgreSQL type), in EXECUTE order

    def __post_init__(self):
        used, declared = set(_PARAMETER.findall(self.sql)), {name for name, _ in self.types}
        if used != declared:
            raise ValueError(f"{self.name}: parameters {sorted(used)} but types for {sorted(declared)}")

    @functools.cached_property
    def plain(self) -> str:
        """The statement as text, each parameter cast to its type as the prepared one receives it."""
        kinds = dict(self.types)
        return _PARAMETER.sub(lambda m: f"CAST({m.group(0)} AS {kinds[m.group(1)]})", self.sql)

    @functools.cached_property
    def prepare(self) -> str:
        position = {name: n for n, (name, _) in enumerate(self.types, start=1)}
        body = _PARAMETER.sub(lambda m: f"${position[m.group(1)]}", self.sql)
        types = f"({', '.join(kind for _, kind in self.types)})" if self.types else ""
        return f"PREPARE {self.name}{types} AS {body}"

    @functools.cached_property
    def execute(self) -> str:
        if not self.types:
            return f"EXECUTE {self.name}"
        arguments = ", ".join(f"CAST(%({name})s AS {kind})" for name, kind in self.types)
        return f"EXECUTE {self.name}({arguments})"


def sql_for(connection: Connection, *statements: PreparedStatement) -> str:
    """One string running `statements` in order on `connection` (their last one's rows come back):
    EXECUTEs, after preparing on this connection whatever it has not prepared yet; or the plain SQL
    when prepared statements are switched off."""
    if not current_app.config["SETTINGS"].database_prepared_statements:
        return ";\n".join(statement.plain for statement in statements)
    info = connection.connection.info
    prepared = info.get(_PREPARED_KEY)
    if prepared is None:  # first use of this connection: ask the server (cheap, once)
        prepared = info[_PREPARED_KEY] = set(connection.exec_driver_sql(_LIST).scalars())
    missing = [statement for statement in statements if statement.name not in prepared]
    if missing:
        try:
            connection.exec_driver_sql(";\n".join(statement.prepare for statement in missing))
        except BaseException:
            # Some of them may exist now: the next use asks the server again rather than guess.
            info.pop(_PREPARED_KEY, None)
            raise
        prepared.update(statement.name for statement in missing)
    return ";\n".join(statement.execute for statement in statements)
