"""A backup is an encrypted pg_dump that restores into a new database with the same money, and a
restore proves itself: it fails, naming the problem, when the ledger or the migrations are off."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import psycopg2
import pytest

from tests.backups.conftest import cli, ledger_snapshot
from tests.onramp.support import ROOT, worker_env
from wallet_api.backups import postgres, service
from wallet_api.backups.crypto import generate_key
from wallet_api.backups.storage import taken_at


def backup_files(directory) -> list[Path]:
    return sorted(Path(directory).iterdir()) if Path(directory).is_dir() else []


def test_a_backup_restores_into_a_new_database_with_the_same_money(backup_app, backup_settings, operator, money,
                                                                   scratch_db):
    app = backup_app()
    made = cli(app, "backup")
    assert made.exit_code == 0, made.output
    [file] = backup_files(backup_settings.backup_dir)
    assert taken_at(file.name) is not None and file.name.endswith(".dump.age")
    assert file.stat().st_mode & 0o777 == 0o600
    assert f"Backup {file.name}" in made.output and "not uploaded" in made.output

    target = scratch_db()
    restored = cli(app, "restore", str(file), "--into", target)
    assert restored.exit_code == 0, restored.output
    assert f"Created database {target}" in restored.output
    assert "Verified: migrations at head" in restored.output
    assert "ledger: 2 user wallets" not in restored.output  # four user wallets, all checked
    assert "ledger: 4 user wallets, 4 transactions checked" in restored.output, restored.output

    original, copy = ledger_snapshot(operator.database_url), ledger_snapshot(postgres.with_database(
        operator.database_url, target))
    assert copy == original
    assert sorted(money) == [email for email in copy["emails"] if email in money]


def test_the_backup_file_is_encrypted_and_a_wrong_key_or_a_damaged_file_fails_cleanly(
        backup_app, backup_settings, operator, money, scratch_db):
    app = backup_app()
    assert cli(app, "backup").exit_code == 0
    [file] = backup_files(backup_settings.backup_dir)
    data = file.read_bytes()
    assert data.startswith(b"age-encryption.org/v1\n")
    for plaintext in (b"PGDMP", b"ledger_entries", b"wallets", b"alembic_version", *(m.encode() for m in money)):
        assert plaintext not in data

    other_key = backup_app(backup_encryption_key=generate_key()[0])
    target = scratch_db()
    wrong = cli(other_key, "restore", str(file), "--into", target)
    assert wrong.exit_code == 1
    assert "cannot decrypt" in wrong.output and "not a backup made with this BACKUP_ENCRYPTION_KEY" in wrong.output
    assert backup_settings.backup_encryption_key not in wrong.output
    assert not postgres.exists(operator.database_url, target)  # the database it made is gone again

    damaged = file.with_name(file.name.replace("wallet-", "wallet-damaged-"))
    middle = len(data) // 2
    damaged.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:])
    broken = cli(app, "restore", str(damaged), "--into", target)
    assert broken.exit_code == 1
    assert "damaged or truncated" in broken.output
    assert not postgres.exists(operator.database_url, target)

    truncated = file.with_name("truncated.age")
    truncated.write_bytes(data[:-100])
    assert "damaged or truncated" in cli(app, "restore", str(truncated), "--into", target).output
    assert not postgres.exists(operator.database_url, target)


def test_a_restore_never_overwrites_data_unless_told_and_never_the_live_database(backup_app, backup_settings,
                                                                                 operator, money, scratch_db):
    app = backup_app()
    assert cli(app, "backup").exit_code == 0
    target = scratch_db()
    assert cli(app, "restore", "latest", "--into", target).exit_code == 0

    again = cli(app, "restore", "latest", "--into", target)
    assert again.exit_code == 1 and f"Database {target} exists and holds data; pass --overwrite" in again.output
    overwritten = cli(app, "restore", "latest", "--into", target, "--overwrite")
    assert overwritten.exit_code == 0, overwritten.output
    assert "Dropping and recreating" in overwritten.output and "Verified" in overwritten.output

    live = postgres.database_name(operator.database_url)
    refused = cli(app, "restore", "latest", "--into", live, "--overwrite")
    assert refused.exit_code == 1 and "is the one DATABASE_URL names and holds data" in refused.output
    assert ledger_snapshot(operator.database_url)["emails"]  # untouched

    missing = cli(app, "restore", "wallet-20200101T000000Z.dump.age", "--into", scratch_db())
    assert missing.exit_code == 1 and "No backup file" in missing.output


def test_a_restore_whose_ledger_does_not_hold_exits_non_zero_naming_each_problem(backup_app, backup_settings, operator,
                                                                                 money, corrupt, scratch_db):
    with psycopg2.connect(operator.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM wallets WHERE currency = 'USD' AND user_id IS NOT NULL ORDER BY balance DESC")
        wallet_id = cur.fetchone()[0]
        cur.execute("SELECT id, transaction_id FROM ledger_entries WHERE wallet_id = %s ORDER BY id LIMIT 1",
                    (wallet_id,))
        entry_id, transaction_id = cur.fetchone()
    conn.close()
    # What only someone going around the ledger's triggers could write: a cache that lies, an entry changed.
    corrupt("UPDATE wallets SET balance = balance + 1000 WHERE id = %(w)s", w=wallet_id)
    corrupt("UPDATE ledger_entries SET amount = amount + 1 WHERE id = %(e)s", e=entry_id)
    app = backup_app()
    assert cli(app, "backup").exit_code == 0  # a backup copies what is there, faithfully

    # bin/restore as an operator runs it: its exit status is what a script or a person sees.
    target = scratch_db()
    env = worker_env(operator, BACKUP_ENCRYPTION_KEY=backup_settings.backup_encryption_key,
                     BACKUP_DIR=backup_settings.backup_dir, BACKUP_PG_BIN_DIR=backup_settings.backup_pg_bin_dir or "")
    result = subprocess.run([str(ROOT / "bin" / "restore"), "latest", "--into", target], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NOT VERIFIED" in result.stdout
    assert f"cached balance: wallet {wallet_id} (USD) caches" in result.stdout
    assert f"unbalanced transaction: {transaction_id}" in result.stdout
    assert backup_settings.backup_encryption_key not in result.stdout + result.stderr
    assert postgres.exists(operator.database_url, target)  # kept for the operator to look at


def test_a_restore_at_another_migration_than_the_code_exits_non_zero_naming_both(backup_app, backup_settings,
                                                                                 operator, money, scratch_db):
    heads = postgres.code_heads(ROOT / "migrations")
    [head] = heads
    with psycopg2.connect(operator.database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE alembic_version SET version_num = '0002'")
    conn.close()
    app = backup_app()
    try:
        assert cli(app, "backup").exit_code == 0
    finally:
        with psycopg2.connect(operator.database_url) as conn, conn.cursor() as cur:
            cur.execute("UPDATE alembic_version SET version_num = %s", (head,))
        conn.close()
    result = cli(app, "restore", "latest", "--into", scratch_db())
    assert result.exit_code == 1
    assert f"migrations: the database is at 0002; this code's head is {head}" in result.output


def test_a_failed_dump_leaves_no_file_behind(backup_settings, operator, app_ctx):
    gone = backup_settings.replace(database_url=postgres.with_database(operator.database_url, "wallet_api_no_such_db"))
    with pytest.raises(service.BackupError, match="pg_dump failed .*wallet_api_no_such_db"):
        service.take_backup(settings=gone)
    assert backup_files(backup_settings.backup_dir) == []


def test_backups_go_to_s3_and_restore_from_there(backup_app, backup_settings, operator, s3_settings, money,
                                                  scratch_db):
    overrides, s3 = s3_settings
    app = backup_app(**overrides)
    made = cli(app, "backup")
    assert made.exit_code == 0, made.output
    [file] = backup_files(backup_settings.backup_dir)
    key = f"prod/db/{file.name}"
    assert f"uploaded to s3://{overrides['backup_s3_bucket']}/{key}" in made.output
    stored = s3.get_object(Bucket=overrides["backup_s3_bucket"], Key=key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(file.read_bytes()).hexdigest()

    file.unlink()  # the machine's disk is gone (a Heroku dyno's is, every day): S3 has the copy
    target = scratch_db()
    restored = cli(app, "restore", "latest", "--into", target)
    assert restored.exit_code == 0, restored.output
    assert f"Restoring s3://{overrides['backup_s3_bucket']}/{key}" in restored.output
    assert ledger_snapshot(postgres.with_database(operator.database_url, target)) == ledger_snapshot(
        operator.database_url)
    again = cli(app, "restore", f"s3://{overrides['backup_s3_bucket']}/{key}", "--into", target, "--overwrite")
    assert again.exit_code == 0, again.output
