"""Surviving dropped database connections without a round trip per checkout.

SQLAlchemy's `pool_pre_ping` sends `SELECT 1` every time a pooled connection is handed out: one
extra round trip per request and per transaction. We replace it with two cheaper guards:

1. On checkout, a zero-wait poll of the connection's socket (`check_on_checkout`). A connection
   idle in the pool has nothing to read; if it does, the server terminated it (FATAL, then EOF),
   a proxy closed it, or (harmlessly) the server sent an unsolicited status message. Only then is
   it pinged, and the pool replaces it when the ping fails. This catches what the pre-ping caught
   in practice (restarts, `pg_terminate_backend`, idle timeouts of servers and proxies) at the
   cost of one non-blocking syscall.
2. Retry on disconnect, where it is safe (`ReconnectingSession`, and the ledger for its own
   transactions): a transaction that lost its connection before COMMIT was sent wrote nothing
   (PostgreSQL rolls back the transaction of a dead connection), so the same work can be started
   again on a new connection. The session retries the first statement of a new transaction (a
   request's first query); the ledger starts its whole transaction again. A disconnect during
   COMMIT is never retried here: whether it committed is unknown (the ledger's idempotency keys
   make a client's retry safe). Statements run outside a transaction (autocommit) are not
   retried either, for the same reason.

When the first guard misses (the connection dies between checkout and use) the second one turns
what would have been a 503 into a successful request.
"""
from __future__ import annotations

import os
import select

import structlog
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError

log = structlog.get_logger(__name__)


def check_on_checkout(engine: Engine) -> None:
    """Install guard 1 (see the module docstring) on `engine`'s pool."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkout")
    def _replace_if_dead(dbapi_connection, _record, _proxy):
        try:
            poller = select.poll()
            poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
            if not poller.poll(0):
                return  # nothing pending: the connection is as we left it
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:  # also fileno() of a connection the driver closed
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.warning("database_connection_replaced", reason=reason)
            # The pool discards this connection and checks out (or opens) another one.
            raise DisconnectionError("pooled connection is closed") from exc


def name_connections(engine: Engine, name: str) -> None:
    """Every connection says which process opened it (`application_name` "wallet_api pid=1234" in
    pg_stat_activity): the process a backend serves is otherwise unknown when it connects over a
    Unix socket, and an operator looking at locks wants to know which worker holds them."""

    @event.listens_for(engine, "do_connect")
    def _name(_dialect, _record, _cargs, cparams):
        cparams["application_name"] = f"{name} pid={os.getpid()}"


def lost_before_commit(exc: BaseException) -> bool:
    """True for an error that means the connection died (SQLAlchemy then invalidates it)."""
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class ReconnectingSession(FlaskSession):
    """Flask-SQLAlchemy's session, retrying the first statement of a transaction once on a new
    connection when the connection turns out to be dead (guard 2 of the module docstring).

    Only a statement that begins the transaction is retried, and only with no pending ORM
    changes: nothing earlier in the transaction can have been lost, and the rollback that clears
    the dead transaction discards nothing of the caller's. `_execute_internal` is where
    SQLAlchemy 2.x sends `execute`, `scalar`, `scalars` and `get` (tests/wallets/test_reconnect.py
    fails if that ever changes). Statements run on `session.connection()` directly are not
    covered; the ledger, which does that, retries its own transaction.
    """

    def _execute_internal(self, statement, params=None, **kwargs):
        retryable = not self.in_transaction() and not (self.new or self.dirty or self.deleted)
        try:
            return super()._execute_internal(statement, params, **kwargs)
        except DBAPIError as exc:
            if not (retryable and lost_before_commit(exc)):
                raise
        self.rollback()
        log.warning("database_statement_retried_after_disconnect")
        return super()._execute_internal(statement, params, **kwargs)


def limit_statement_time(session, timeout_ms: int) -> None:
    """Bound every statement of the session's current transaction to `timeout_ms` (SET LOCAL)."""
    session.execute(text("SELECT set_config('statement_timeout', :t, true)"), {"t": f"{int(timeout_ms)}ms"})
