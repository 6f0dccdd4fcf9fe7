"""One real PostgreSQL database (made by the migrations) and one Redis db for the whole run.

Servers: TEST_DATABASE_URL / TEST_REDIS_URL when set, else the local servers on 127.0.0.1 when
they answer, else embedded ones (see wallet_api/local_services.py). The suite creates its own
database and drops it at the end; it uses Redis db 15 (TEST_REDIS_DB) of a shared local server. Between tests
every table is emptied and Redis flushed, so tests may commit, use many connections and run
real worker processes.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from decimal import Decimal

import psycopg2
import pytest
from redis import Redis
from sqlalchemy import text

from wallet_api import create_app
from wallet_api.auth.models import Role, User
from wallet_api.auth.tokens import issue_access_token
from wallet_api.config import Settings
from wallet_api.extensions import db
from wallet_api.local_services import (LOCAL_REDIS, ensure_database, ensure_roles, resolve_test_services,
                                       with_database)
from wallet_api.wallets.system_wallets import ensure_system_wallets

TEST_JWT_SECRET = "test-jwt-secret-0123456789abcdef-0123456789"
TEST_REFRESH_SECRET = "test-refresh-secret-0123456789abcdef-012345"
TEST_WEBHOOK_SECRET = "wk_test_webhook_secret"
TEST_MOONPAY_SECRET = "sk_test_moonpay_secret"
KEPT_TABLES = {"alembic_version"}


TEST_OWNER_ROLE, TEST_APP_ROLE, TEST_ROLE_PASSWORD = "wallet_test_owner", "wallet_test_app", "wallet-test"


@dataclass(frozen=True)
class Services:
    superuser_url: str   # the test database as a superuser: only for writing around the app (corruption)
    owner_url: str       # the schema owner: migrations and the cleanup between tests
    app_url: str         # the application's restricted role: what the app and the workers use
    redis_url: str


def write_around_triggers(database_url: str, sql: str, **params) -> None:
    """Run `sql` with triggers switched off (session_replication_role = replica), as only a database
    owner or superuser could: how tests plant the corruption reconciliation and restores must catch."""
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL session_replication_role = replica")
            cur.execute(sql, params)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def services():
    admin_url, redis_url = resolve_test_services()
    if redis_url == LOCAL_REDIS:
        # Never db 0 of a shared server; TEST_REDIS_DB separates concurrent runs on one machine.
        redis_url = redis_url.rsplit("/", 1)[0] + "/" + os.environ.get("TEST_REDIS_DB", "15")
    owner_url, app_url = ensure_roles(admin_url, owner=TEST_OWNER_ROLE, app=TEST_APP_ROLE,
                                      password=TEST_ROLE_PASSWORD)
    name = f"wallet_api_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    ensure_database(admin_url, name, owner=TEST_OWNER_ROLE)
    yield Services(superuser_url=with_database(admin_url, name), owner_url=with_database(owner_url, name),
                   app_url=with_database(app_url, name), redis_url=redis_url)
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture(scope="session")
def settings(services) -> Settings:
    return make_settings(database_url=services.app_url, migration_database_url=services.owner_url,
                         redis_url=services.redis_url)


def make_settings(**overrides) -> Settings:
    base = dict(app_env="test", jwt_secret=TEST_JWT_SECRET, jwt_refresh_secret=TEST_REFRESH_SECRET,
                moonpay_webhook_secret=TEST_WEBHOOK_SECRET, moonpay_secret_key=TEST_MOONPAY_SECRET,
                moonpay_publishable_key="pk_test_key", ratelimit_enabled=False,
                db_pool_size=20, db_max_overflow=20, log_level="WARNING")
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="session")
def app(settings):
    from flask_migrate import upgrade

    app = create_app(settings)
    with app.app_context():
        upgrade()  # the migrations are the only way the schema is made
        db.session.remove()
    return app


@pytest.fixture(autouse=True)
def _clean_state(request, settings, services):
    yield
    if "app" not in request.fixturenames:
        return
    app = request.getfixturevalue("app")
    with app.app_context():
        db.session.remove()
        tables = [t.name for t in db.metadata.sorted_tables if t.name not in KEPT_TABLES]
    # As the owner: the application's role may not TRUNCATE (and the ledger's trigger refuses it
    # unless the session says it is the test suite cleaning up).
    conn = psycopg2.connect(services.owner_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL wallet.allow_ledger_truncate = on")
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            existing = {row[0] for row in cur.fetchall()}
            names = ", ".join(f'"{t}"' for t in tables if t in existing)
            cur.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        conn.close()
    with app.app_context():
        ensure_system_wallets(db.session)
        db.session.commit()
        db.session.remove()
    Redis.from_url(settings.redis_url).flushdb()


@pytest.fixture
def app_ctx(app):
    with app.app_context():
        yield app
        db.session.remove()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def redis_client(settings) -> Redis:
    return Redis.from_url(settings.redis_url)


@pytest.fixture(scope="session")
def _cheap_password_hash():
    # Users made by the factory skip the deliberately slow argon2 cost; auth tests use the API.
    from argon2 import PasswordHasher

    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(FACTORY_PASSWORD)


FACTORY_PASSWORD = "correct horse battery staple"


@pytest.fixture
def make_user(app, _cheap_password_hash):
    """make_user(email=None, role="USER") -> User (committed, detached-safe attributes loaded)."""

    def make(email: str | None = None, role: str = Role.USER.value) -> User:
        with app.app_context():
            user = User(email=email or f"user-{uuid.uuid4().hex[:10]}@example.com",
                        password_hash=_cheap_password_hash, role=role)
            db.session.add(user)
            db.session.commit()
            db.session.refresh(user)
            db.session.expunge(user)
            return user

    return make


@pytest.fixture
def auth_headers(app):
    """auth_headers(user) -> {"Authorization": "Bearer <access token>"}."""

    def headers(user: User) -> dict[str, str]:
        with app.app_context():
            return {"Authorization": f"Bearer {issue_access_token(user_id=user.id, role=user.role)}"}

    return headers


@pytest.fixture
def user(make_user):
    return make_user()


@pytest.fixture
def admin(make_user):
    return make_user(role=Role.ADMIN.value)


@pytest.fixture
def make_settings_app(settings, app):  # `app`: the schema migrated, and the state cleaned after
    """make_settings_app(**overrides) -> a second app on the same database and Redis."""
    built = []

    def build(**overrides):
        app = create_app(make_settings(**{"database_url": settings.database_url, "redis_url": settings.redis_url,
                                          "migration_database_url": settings.migration_database_url, **overrides}))
        built.append(app)
        return app

    yield build
    for app in built:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture(autouse=True)
def _limiter_as_the_default_app_configures_it(settings):
    """The Limiter is one module global whose `enabled` the last app built sets; reset it per test."""
    from wallet_api.extensions import limiter

    limiter.enabled = settings.ratelimit_enabled
    yield
    limiter.enabled = settings.ratelimit_enabled


# --------------------------------------------------------------------------- money fixtures, for every test


@pytest.fixture
def make_wallet(app, make_user):
    """make_wallet(user=None, currency="USD") -> wallet id (a new user when none is given)."""
    from wallet_api.wallets import service

    def make(user=None, currency: str = "USD") -> uuid.UUID:
        owner = user or make_user()
        with app.app_context():
            return service.create_wallet(user_id=owner.id, currency=currency).id

    return make


@pytest.fixture
def fund(app):
    """fund(wallet_id, "100.00", kind="deposit", reference=None, key=None) credits a wallet through the
    ledger from the MoonPay clearing wallet; returns the LedgerResult."""
    from wallet_api.wallets import ledger
    from wallet_api.wallets.models import SystemAccount

    def credit(wallet_id: uuid.UUID, amount, *, kind: str = "deposit", reference: str | None = None,
               key: str | None = None):
        with app.app_context():
            try:
                return ledger.credit(
                    wallet_id=wallet_id, amount=Decimal(amount), kind=kind, reference=reference,
                    counter_account=SystemAccount.MOONPAY_CLEARING,
                    idempotency_key=key or ledger.entry_key(source="test", reference=uuid.uuid4().hex,
                                                            wallet_id=wallet_id, action="credit"))
            finally:
                db.session.remove()

    return credit


@pytest.fixture
def funded_wallet(make_wallet, fund):
    """funded_wallet("100.00", user=None, currency="USD") -> wallet id holding that balance."""

    def make(amount: str = "100.00", *, user=None, currency: str = "USD") -> uuid.UUID:
        wallet_id = make_wallet(user, currency)
        fund(wallet_id, amount)
        return wallet_id

    return make


@pytest.fixture
def db_read(app):
    """db_read(sql, **params) -> list of row mappings, through a fresh session."""

    def read(sql: str, **params):
        with app.app_context():
            try:
                return [dict(r) for r in db.session.execute(text(sql), params).mappings().all()]
            finally:
                db.session.remove()

    return read


@pytest.fixture
def books(db_read):
    return Books(db_read)


class Books:
    """The assertions' read-only view of money, events and everything else in the database."""

    def __init__(self, read):
        self.read = read

    def _scalar(self, sql: str, **params):
        rows = self.read(sql, **params)
        return next(iter(rows[0].values())) if rows else None

    def balance(self, wallet_id) -> Decimal:
        """The cached balance column."""
        return self._scalar("SELECT balance FROM wallets WHERE id = :w", w=wallet_id)

    def entries_sum(self, wallet_id) -> Decimal:
        return self._scalar("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE wallet_id = :w", w=wallet_id)

    def credits(self, wallet_id) -> int:
        return self._scalar("SELECT count(*) FROM ledger_entries WHERE wallet_id = :w", w=wallet_id)

    def system_balance(self, account: str, currency: str) -> Decimal:
        return self._scalar("""SELECT coalesce(sum(e.amount), 0)
                               FROM ledger_entries e JOIN wallets w ON w.id = e.wallet_id
                               WHERE w.system_account = :a AND w.currency = :c""", a=account, c=currency)

    def system_row_balance(self, account: str, currency: str) -> Decimal:
        return self._scalar("SELECT balance FROM wallets WHERE system_account = :a AND currency = :c",
                            a=account, c=currency)

    def count(self, table: str) -> int:
        return self._scalar(f"SELECT count(*) FROM {table}")

    def unbalanced_transactions(self) -> int:
        return self._scalar("""SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries
                               GROUP BY transaction_id, currency HAVING sum(amount) <> 0) t""")

    def drifted_wallets(self) -> int:
        """User wallets whose cached balance differs from SUM(entries)."""
        return self._scalar("""SELECT count(*) FROM wallets w WHERE w.user_id IS NOT NULL AND w.balance <>
                               (SELECT coalesce(sum(amount), 0) FROM ledger_entries e WHERE e.wallet_id = w.id)""")

    def total(self, currency: str) -> Decimal:
        return self._scalar("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE currency = :c", c=currency)

    def onramp(self, onramp_id) -> dict:
        return self.read("SELECT * FROM onramp_transactions WHERE id = :i", i=onramp_id)[0]

    def events(self) -> list[dict]:
        return self.read("SELECT * FROM webhook_events ORDER BY received_at, id")

    def event(self, event_id) -> dict:
        return self.read("SELECT * FROM webhook_events WHERE id = :i", i=event_id)[0]
