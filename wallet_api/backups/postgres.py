"""pg_dump, pg_restore and the few server-level statements around them (create, drop, is it empty).

Connection details go to the client tools as a libpq conninfo string without the password, and
the password through PGPASSWORD: a command line is visible to every user of the machine (`ps`),
a process's environment only to its owner.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import psycopg2
from alembic.config import Config
from alembic.script import ScriptDirectory
from flask import Flask
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn
from sqlalchemy import URL
from sqlalchemy.pool import NullPool

from wallet_api.config import normalise_database_url
from wallet_api.extensions import db

MAINTENANCE_DATABASE = "postgres"
# Identifiers we create ourselves; anything else given as a database name is refused.
DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,62}$")


class ToolMissing(RuntimeError):
    """A PostgreSQL client program is not installed (or not where BACKUP_PG_BIN_DIR says)."""


def tool(name: str, *, bin_dir: str | None) -> str:
    """The path of pg_dump / pg_restore: in BACKUP_PG_BIN_DIR when set, else on PATH."""
    found = shutil.which(name, path=bin_dir) if bin_dir else shutil.which(name)
    if found is None:
        where = f"in BACKUP_PG_BIN_DIR ({bin_dir})" if bin_dir else "on PATH"
        raise ToolMissing(f"{name} not found {where}: install the PostgreSQL client of the server's major version "
                          "(or newer), or set BACKUP_PG_BIN_DIR to its bin directory.")
    return found


def libpq(url: str, *, database: str | None = None) -> tuple[str, dict[str, str]]:
    """(conninfo without the password, environment with PGPASSWORD) for a client program."""
    params = parse_dsn(url)
    password = params.pop("password", None)
    if database is not None:
        params["dbname"] = database
    env = {**os.environ}
    env.pop("PGPASSWORD", None)
    if password:
        env["PGPASSWORD"] = password
    return make_dsn(**params), env


def database_name(url: str) -> str:
    params = parse_dsn(url)
    return params.get("dbname") or params.get("user") or ""


def same_database(a: str, b: str) -> bool:
    """Whether two URLs name the same database on the same server (as far as their text tells)."""
    first, second = parse_dsn(a), parse_dsn(b)
    return all(first.get(k) == second.get(k) for k in ("host", "port", "dbname"))


@contextmanager
def app_context_on(url: str) -> Iterator[Flask]:
    """An app context whose `db.session` talks to database `url` (a restored copy), not DATABASE_URL, so
    code written against `db.session` (the ledger checks) runs on it unchanged. One connection, closed after."""
    app = Flask("wallet_api.backups.verify")
    app.config.update(SQLALCHEMY_DATABASE_URI=normalise_database_url(_as_url(url)),
                      SQLALCHEMY_ENGINE_OPTIONS={"poolclass": NullPool,
                                                 "connect_args": {"application_name": "wallet_api.backups"}})
    db.init_app(app)
    with app.app_context():
        try:
            yield app
        finally:
            db.session.remove()
            db.engine.dispose()


def _as_url(conninfo: str) -> str:
    """A SQLAlchemy URL for a libpq conninfo string or URL."""
    if "://" in conninfo:
        return conninfo
    params = parse_dsn(conninfo)
    # A Unix-socket directory (host=/run/postgresql) cannot stand in a URL's authority: it goes in the
    # query, where libpq reads it too.
    socket_dir = (params.get("host") or "").startswith("/")
    query = {k: v for k, v in params.items()
             if k not in ("user", "password", "port", "dbname") and (k != "host" or socket_dir)}
    return URL.create("postgresql+psycopg2", username=params.get("user"), password=params.get("password"),
                      host=None if socket_dir else params.get("host"),
                      port=int(params["port"]) if params.get("port") else None,
                      database=params.get("dbname"), query=query).render_as_string(hide_password=False)


def with_database(url: str, name: str) -> str:
    """The same server, credentials and options, database `name` (a conninfo string psycopg2 and libpq take)."""
    return make_dsn(url, dbname=name)


def start_dump(url: str, *, bin_dir: str | None, stderr: IO) -> subprocess.Popen:
    """pg_dump of the whole database in the custom format (compressed, for pg_restore) on its stdout."""
    conninfo, env = libpq(url)
    return subprocess.Popen([tool("pg_dump", bin_dir=bin_dir), "--format=custom", "--no-password",
                             f"--dbname={conninfo}"], stdout=subprocess.PIPE, stderr=stderr, env=env)


def start_restore(url: str, *, bin_dir: str | None, stderr: IO, privileges: bool = True) -> subprocess.Popen:
    """pg_restore reading a custom-format archive on its stdin, all of it in one transaction.

    One transaction: a restore that fails (or is killed because the decryption failed) leaves
    nothing behind. --no-owner: the restoring role owns what it creates (the original owner may
    not exist on this server). Grants are restored unless `privileges` is false.
    """
    conninfo, env = libpq(url)
    args = [tool("pg_restore", bin_dir=bin_dir), "--single-transaction", "--exit-on-error", "--no-owner",
            "--no-password", f"--dbname={conninfo}"]
    if not privileges:
        args.append("--no-privileges")
    return subprocess.Popen(args, stdin=subprocess.PIPE, stderr=stderr, env=env)


@contextmanager
def connect(url: str, *, database: str | None = None) -> Iterator:
    """An autocommit psycopg2 connection (CREATE/DROP DATABASE cannot run in a transaction)."""
    conninfo = with_database(url, database) if database else url
    conn = psycopg2.connect(conninfo, application_name="wallet_api.backups")
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def check_name(name: str) -> str:
    if not DATABASE_NAME.match(name):
        raise ValueError(f"not a database name this tool accepts: {name!r} (letters, digits, _ and -)")
    return name


def exists(url: str, name: str) -> bool:
    with connect(url, database=MAINTENANCE_DATABASE) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return cur.fetchone() is not None


def is_empty(url: str, name: str) -> bool:
    """True when database `name` holds no table, view, sequence or function outside the system schemas."""
    with connect(url, database=name) as conn, conn.cursor() as cur:
        cur.execute("""
            SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%')
                 + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))""")
        return cur.fetchone()[0] == 0


def create(url: str, name: str) -> None:
    with connect(url, database=MAINTENANCE_DATABASE) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(check_name(name))))


def drop(url: str, name: str) -> None:
    """Drop database `name` if it exists, ending its sessions (WITH FORCE)."""
    with connect(url, database=MAINTENANCE_DATABASE) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(check_name(name))))


def databases_like(url: str, prefix: str) -> list[str]:
    with connect(url, database=MAINTENANCE_DATABASE) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY datname", (prefix,))
        return [row[0] for row in cur.fetchall()]


def migration_revisions(url: str) -> set[str]:
    """The revisions recorded in alembic_version (empty when the table is missing)."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return set()
        cur.execute("SELECT version_num FROM alembic_version")
        return {row[0] for row in cur.fetchall()}


def code_heads(migrations_dir: str | Path) -> set[str]:
    """The head revisions of the migrations this code ships."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    return set(ScriptDirectory.from_config(config).get_heads())
