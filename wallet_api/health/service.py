"""Readiness checks: each returns {ok, detail} and never raises; details carry no secrets."""
from __future__ import annotations

from flask import current_app
from sqlalchemy import text

from wallet_api.extensions import db
from wallet_api.queues import redis_connection


def readiness_checks() -> dict[str, dict]:
    return {"database": _check(_database), "migrations": _check(_migrations), "redis": _check(_redis)}


def _check(fn) -> dict:
    try:
        return {"ok": True, "detail": fn()}
    except Exception as exc:  # a probe reports, it does not crash
        db.session.rollback()
        return {"ok": False, "detail": type(exc).__name__ + (f": {exc.args[0]}" if isinstance(exc, _Reported) else "")}


class _Reported(Exception):
    """A failure whose message is safe to show."""


def _database() -> str:
    db.session.execute(text("SELECT 1"))
    return "reachable"


def _migrations() -> str:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    migrate = current_app.extensions["migrate"]
    script = ScriptDirectory.from_config(migrate.migrate.get_config(migrate.directory))
    heads = set(script.get_heads())
    with db.engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current != heads:
        raise _Reported(f"database at {sorted(current) or 'no revision'}, code expects {sorted(heads)}")
    return "up to date"


def _redis() -> str:
    redis_connection().ping()
    return "reachable"
