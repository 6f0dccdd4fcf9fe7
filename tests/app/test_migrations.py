"""The migrations are the only way the schema is made, and they match the models."""
import uuid

import psycopg2
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import make_url

from tests.conftest import make_settings
from wallet_api import create_app
from wallet_api.extensions import db
from wallet_api.local_services import with_database


def test_models_and_migrations_describe_the_same_schema(app_ctx):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert diff == []


@pytest.fixture
def scratch_app(settings, services):
    from tests.conftest import TEST_OWNER_ROLE

    admin = make_url(services.superuser_url).set(database="postgres").render_as_string(hide_password=False)
    name = f"wallet_api_scratch_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" OWNER {TEST_OWNER_ROLE}')
    app = create_app(make_settings(database_url=with_database(settings.database_url, name),
                                   migration_database_url=with_database(settings.migration_database_url, name),
                                   redis_url=settings.redis_url))
    yield app
    with app.app_context():
        db.engine.dispose()
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def test_upgrade_downgrade_upgrade_on_an_empty_database(scratch_app):
    from flask_migrate import downgrade, upgrade
    from sqlalchemy import inspect, text

    with scratch_app.app_context():
        upgrade()
        tables = set(inspect(db.engine).get_table_names())
        assert {"users", "refresh_tokens", "wallets", "ledger_transactions", "ledger_entries"} <= tables
        system = db.session.execute(text("SELECT count(*) FROM wallets WHERE system_account IS NOT NULL")).scalar()
        assert system == 14  # two system accounts x seven currencies
        db.session.remove()
        downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        upgrade()
        assert "ledger_entries" in inspect(db.engine).get_table_names()
        db.session.remove()
