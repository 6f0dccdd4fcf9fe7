"""Backups against the real servers: pg_dump/pg_restore on the test database, scratch databases for
restores (dropped after each test), and a real S3-compatible HTTP server (moto's) on loopback."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path

import boto3
import pgserver
import psycopg2
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import write_around_triggers
from wallet_api.backups import postgres
from wallet_api.backups.crypto import generate_key
from wallet_api.extensions import db
from wallet_api.wallets import service as wallets


@pytest.fixture(scope="session")
def backup_key() -> str:
    return generate_key()[0]


@pytest.fixture(scope="session")
def pg_bin_dir(settings) -> str | None:
    """PATH's pg_dump when it is as new as the server, else the embedded server's own client programs."""
    with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version_num")
        server_major = int(cur.fetchone()[0]) // 10000
    conn.close()
    found = shutil.which("pg_dump")
    if found:
        version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
        match = re.search(r"\(PostgreSQL\)\s+(\d+)", version)
        if match and int(match.group(1)) >= server_major:
            return None
    return str(Path(pgserver.__file__).parent / "pginstall" / "bin")


@pytest.fixture
def operator(settings, services):
    """The settings an operator runs bin/backup, bin/restore and bin/restore-test with: an administrative
    database role (restores create databases; the application's role may not)."""
    return settings.replace(database_url=services.superuser_url)


@pytest.fixture
def backup_settings(operator, tmp_path, backup_key, pg_bin_dir):
    return operator.replace(backup_encryption_key=backup_key, backup_dir=str(tmp_path / "backups"),
                            backup_pg_bin_dir=pg_bin_dir)


@pytest.fixture
def backup_app(make_settings_app, backup_settings):
    """An app on the test database with backups configured (BACKUP_DIR in the test's tmp_path)."""
    fields = ("database_url", "backup_encryption_key", "backup_dir", "backup_pg_bin_dir", "backup_s3_bucket",
              "backup_s3_prefix", "backup_s3_endpoint_url", "backup_s3_region", "aws_access_key_id",
              "aws_secret_access_key")

    def build(**overrides):
        return make_settings_app(**{**{name: getattr(backup_settings, name) for name in fields}, **overrides})

    return build


@pytest.fixture
def scratch_db(operator):
    """scratch_db() -> a fresh database name on the test server; every one is dropped after the test."""
    names = []

    def make() -> str:
        names.append(f"wallet_api_test_restore_{os.getpid()}_{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield make
    for name in names:
        postgres.drop(operator.database_url, name)


@pytest.fixture(scope="session")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_settings(s3_endpoint):
    """Settings overrides for a fresh bucket on the local S3 server, and a boto3 client to look at it."""
    bucket = f"wallet-backups-{uuid.uuid4().hex[:12]}"
    overrides = dict(backup_s3_bucket=bucket, backup_s3_prefix="prod/db/", backup_s3_endpoint_url=s3_endpoint,
                     backup_s3_region="us-east-1", aws_access_key_id="test-access-key",
                     aws_secret_access_key="test-secret-key")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="test-access-key", aws_secret_access_key="test-secret-key")
    client.create_bucket(Bucket=bucket)
    return overrides, client


def cli(app, *args):
    """Run a flask command of `app` in-process; the result's output holds stdout and stderr."""
    return app.test_cli_runner().invoke(args=list(args))


@pytest.fixture
def corrupt(operator):
    """corrupt(sql, **params): write around the service and the ledger's triggers, as only a database
    owner with triggers switched off could (what a restore's verification exists to catch)."""

    return lambda sql, **params: write_around_triggers(operator.database_url, sql, **params)


@pytest.fixture
def money(app, make_user, fund):
    """Two users with USD and ETH wallets, funded, and a transfer between them; returns the user emails."""
    alice, bob = make_user(), make_user()
    with app.app_context():
        ids = {(who.email, currency): wallets.create_wallet(user_id=who.id, currency=currency).id
               for who in (alice, bob) for currency in ("USD", "ETH")}
        db.session.remove()
    fund(ids[(alice.email, "USD")], "250.75")
    fund(ids[(alice.email, "ETH")], "1.000000000000000001")
    fund(ids[(bob.email, "USD")], "10.00")
    with app.app_context():
        wallets.create_transfer(user_id=alice.id, from_wallet_id=ids[(alice.email, "USD")],
                                  to_wallet_id=ids[(bob.email, "USD")], amount=Decimal("50.25"), reference="rent")
        db.session.remove()
    return [alice.email, bob.email]


def ledger_snapshot(url: str) -> dict:
    """Every wallet's balance and entry count, and the number of transactions: what a restore must keep."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT w.id::text, w.currency, w.balance, count(e.id)
                           FROM wallets w LEFT JOIN ledger_entries e ON e.wallet_id = w.id
                           GROUP BY w.id ORDER BY w.id""")
            wallets_ = cur.fetchall()
            cur.execute("SELECT count(*) FROM ledger_transactions")
            transactions = cur.fetchone()[0]
            cur.execute("SELECT email FROM users ORDER BY email")
            emails = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    return {"wallets": wallets_, "transactions": transactions, "emails": emails}
