"""Readiness: may this process take traffic, and is the platform around it safe to run?

Every check returns `{ok, detail}` and never raises; details carry no secrets. Each one is bounded
(a 2 s statement timeout, 1 s Redis timeouts), and the whole answer is cached for a couple of
seconds, so a load balancer may ask every few seconds. No Alembic machinery runs per call: the
code's migration head is read once per process, the database's with one SELECT.

- database: a round trip.
- migrations: the database is at the code's head.
- redis: PING.
- secrets: none rotated more than 90 days ago (warnings from 60 days; unknown dates are listed).
- database_privileges: the application's role is not a superuser, owns no table and holds no
  privilege it should not (wallet_api/db_roles.py).
- database_tls: the connection is encrypted, where DATABASE_TLS_REQUIRED (production default).
- periodic_jobs: every enabled periodic job succeeded within twice its interval (a job that
  never ran fails only once this process has been up that long).
- backups: configured (required in production), a successful backup within a day, and a
  successful restore test within 90 days (wallet_api/backups/status.py).
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

from alembic.script import ScriptDirectory
from flask import current_app
from redis import Redis
from sqlalchemy import text

from wallet_api.backups.status import backup_status
from wallet_api.database import limit_statement_time
from wallet_api.db_roles import role_problems
from wallet_api.db_types import utcnow
from wallet_api.extensions import db
from wallet_api.jobs import catalog
from wallet_api.jobs.service import last_successes
from wallet_api.queues import redis_from_settings
from wallet_api.secrets_policy import rotation_ages

CACHE_SECONDS = 2.0
STATEMENT_TIMEOUT_MS = 2000
STARTED = time.monotonic()
_lock = threading.Lock()


class Failed(Exception):
    """A check's failure with a message that is safe to show."""


def readiness_checks() -> dict[str, dict]:
    """Every check's {ok, detail}, at most CACHE_SECONDS old."""
    cache = current_app.extensions.setdefault("readiness_cache", {})
    with _lock:
        if cache.get("at", -CACHE_SECONDS) > time.monotonic() - CACHE_SECONDS:
            return cache["checks"]
    checks = {name: _run(check) for name, check in CHECKS.items()}
    with _lock:
        cache.update(at=time.monotonic(), checks=checks)
    return checks


def _run(check: Callable[[], str]) -> dict:
    try:
        return {"ok": True, "detail": check()}
    except Failed as exc:
        db.session.rollback()
        return {"ok": False, "detail": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a probe reports, it does not crash
        db.session.rollback()
        return {"ok": False, "detail": f"{type(exc).__name__} (see the logs)"}
    finally:
        db.session.rollback()  # every check reads in its own short transaction


def _bounded() -> None:
    limit_statement_time(db.session, STATEMENT_TIMEOUT_MS)


def _database() -> str:
    _bounded()
    db.session.execute(text("SELECT 1"))
    return "reachable"


def _migrations() -> str:
    _bounded()
    heads = _code_heads()
    current = set(db.session.execute(text("SELECT version_num FROM alembic_version")).scalars())
    if current != heads:
        raise Failed(f"database at {sorted(current) or 'no revision'}, code expects {sorted(heads)}")
    return "up to date"


def _code_heads() -> set[str]:
    ext = current_app.extensions
    if "migration_heads" not in ext:
        migrate = ext["migrate"]
        ext["migration_heads"] = set(ScriptDirectory.from_config(migrate.migrate.get_config(migrate.directory))
                                     .get_heads())
    return ext["migration_heads"]


def probe_redis() -> Redis:
    """The app's Redis client for probes and scrapes: 1 s timeouts, so a down Redis answers fast."""
    ext = current_app.extensions
    if "readiness_redis" not in ext:
        ext["readiness_redis"] = redis_from_settings(current_app.config["SETTINGS"], socket_connect_timeout=1,
                                                     socket_timeout=1)
    return ext["readiness_redis"]


def _redis() -> str:
    probe_redis().ping()
    return "reachable"


def _secrets() -> str:
    ages = rotation_ages(current_app.config["SETTINGS"].secret_rotation_dates)
    critical = [f"{a.name} rotated {a.age_days} days ago" for a in ages if a.level == "critical"]
    if critical:
        raise Failed("rotate now (over 90 days): " + "; ".join(critical))
    warnings = [f"{a.name} rotated {a.age_days} days ago" for a in ages if a.level == "warning"]
    unknown = [a.name for a in ages if a.level == "unknown"]
    parts = ["valid"]
    if warnings:
        parts.append("rotate soon (over 60 days): " + "; ".join(warnings))
    if unknown:
        parts.append("rotation date unknown: " + ", ".join(unknown))
    return "; ".join(parts)


def _database_privileges() -> str:
    _bounded()
    problems = role_problems(db.session.connection())
    if problems:
        raise Failed("; ".join(problems))
    return "least privilege"


def _database_tls() -> str:
    _bounded()
    encrypted = db.session.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
    if encrypted:
        return "encrypted"
    if current_app.config["SETTINGS"].database_tls_required:
        raise Failed("the connection to PostgreSQL is not encrypted")
    return "not encrypted (DATABASE_TLS_REQUIRED is off)"


def _periodic_jobs() -> str:
    _bounded()
    settings = current_app.config["SETTINGS"]
    jobs = [job for job in catalog.PERIODIC_JOBS if job.enabled(settings)]
    last = last_successes(names=[job.name for job in jobs])
    now, up = utcnow(), time.monotonic() - STARTED
    late = []
    for job in jobs:
        allowed = 2 * int(job.interval(settings))
        succeeded = last.get(job.name)
        if succeeded is None and up > allowed:
            late.append(f"{job.name} never succeeded")
        elif succeeded is not None and now - succeeded > dt.timedelta(seconds=allowed):
            late.append(f"{job.name} last succeeded {int((now - succeeded).total_seconds() // 60)} min ago")
    if late:
        raise Failed("; ".join(late))
    return f"{len(jobs)} jobs on schedule"


def _backups() -> str:
    settings = current_app.config["SETTINGS"]
    status = backup_status(settings=settings)
    if not status.configured:
        if settings.is_production:
            raise Failed("backups are not configured (BACKUP_ENCRYPTION_KEY, BACKUP_S3_BUCKET)")
        return "not configured"
    problems = []
    if status.backup_overdue:
        problems.append(f"no successful backup since {_when(status.last_backup_at)}")
    if status.restore_test_due:
        problems.append(f"no successful restore test within 90 days (last: {_when(status.last_restore_test_at)})")
    if problems:
        raise Failed("; ".join(problems))
    where = "offsite" if status.offsite else "local disk only"
    return f"last backup {_when(status.last_backup_at)} ({where}); last restore test {_when(status.last_restore_test_at)}"


def _when(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "never"


CHECKS: dict[str, Callable[[], str]] = {
    "database": _database,
    "migrations": _migrations,
    "redis": _redis,
    "secrets": _secrets,
    "database_privileges": _database_privileges,
    "database_tls": _database_tls,
    "periodic_jobs": _periodic_jobs,
    "backups": _backups,
}
