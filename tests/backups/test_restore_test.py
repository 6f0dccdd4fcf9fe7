"""`flask restore-test` backs up, restores into a scratch database, verifies, drops it and records the
run; `backup_status()` reads that record. The daily backup job is scheduled only when configured."""
from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from rq_scheduler import Scheduler
from sqlalchemy import select

from tests.backups.conftest import cli
from wallet_api.alerts.models import AlertLog
from wallet_api.backups import postgres
from wallet_api.backups.status import backup_status
from wallet_api.config import ConfigError, load_settings
from wallet_api.extensions import db
from wallet_api.jobs.models import JobRun
from worker import jobs as worker_jobs
from worker.schedule import register_schedule


def scratch_left(operator) -> list[str]:
    return postgres.databases_like(operator.database_url, "wallet_restore_test_")


def runs(app, name: str) -> list[JobRun]:
    with app.app_context():
        found = db.session.scalars(select(JobRun).where(JobRun.job_name == name).order_by(JobRun.created_at)).all()
        db.session.expunge_all()
        return found


def test_a_restore_test_records_its_success_and_leaves_no_scratch_database(backup_app, operator, money):
    app = backup_app()
    with app.app_context():
        before = backup_status()
    assert before.configured and not before.offsite
    assert before.last_restore_test_at is None and before.restore_test_due and before.backup_overdue

    result = cli(app, "restore-test")

    assert result.exit_code == 0, result.output
    assert "Restore test passed" in result.output and "(4 wallets, 4 transactions checked)" in result.output
    assert scratch_left(operator) == []
    [run] = runs(app, "restore-test")
    assert run.status == "succeeded" and run.trigger == "cli" and run.counts["wallets_checked"] == 4
    [backup] = runs(app, "backup")
    assert backup.status == "succeeded" and backup.counts["file"] in run.counts["source"]
    with app.app_context():
        status = backup_status()
    assert status.last_restore_test_at == run.finished_at and not status.restore_test_due
    assert status.last_backup_at == backup.finished_at and not status.backup_overdue
    assert status.last_backup == backup.counts["file"] and status.ok
    with app.app_context():
        later = backup_status(now=run.finished_at + dt.timedelta(days=91))
    assert later.restore_test_due and later.backup_overdue and not later.ok


def test_a_failing_restore_test_is_recorded_with_an_alert_and_cleans_up(backup_app, operator, money, corrupt):
    corrupt("UPDATE wallets SET balance = balance + 5 WHERE user_id IS NOT NULL AND currency = 'ETH'")
    app = backup_app()

    result = cli(app, "restore-test")

    assert result.exit_code == 1
    assert "restore-test failed: The restore of" in result.output and "cached balance: wallet" in result.output
    assert scratch_left(operator) == []
    [run] = runs(app, "restore-test")
    assert run.status == "failed" and "cached balance: wallet" in run.error
    with app.app_context():
        alert = db.session.scalars(select(AlertLog).where(AlertLog.subject == "job:restore-test")).one()
        assert alert.alert_type == "JOB_CRASH" and alert.severity == "critical"
        assert backup_status().last_restore_test_at is None


def test_a_scratch_database_left_by_an_interrupted_restore_test_is_dropped_by_the_next(backup_app, operator, money):
    app = backup_app()
    assert cli(app, "restore-test").exit_code == 0
    [first] = runs(app, "restore-test")
    # The next run names its scratch database with the same prefix; leave one behind as a killed run would.
    prefix = "wallet_restore_test_" + hashlib.sha256(
        postgres.database_name(operator.database_url).encode()).hexdigest()[:8] + "_"
    postgres.create(operator.database_url, prefix + "19990101000000")
    result = cli(app, "restore-test", "--from", "latest")
    assert result.exit_code == 0, result.output
    assert f"Dropping {prefix}19990101000000, left by an interrupted restore test" in result.output
    assert scratch_left(operator) == []
    assert len(runs(app, "backup")) == 1  # --from tested the existing backup instead of taking one
    assert first.status == "succeeded"


def test_the_daily_backup_is_scheduled_only_when_backups_are_configured(app, redis_client, settings, backup_settings):
    scheduler = Scheduler(connection=redis_client)
    assert "periodic-backup" not in register_schedule(scheduler=scheduler, settings=settings)
    report = register_schedule(scheduler=scheduler, settings=backup_settings)
    assert report["periodic-backup"] == "registered"
    job = {job.id: job for job in scheduler.get_jobs()}["periodic-backup"]
    assert job.func_name == "worker.jobs.backup" and job.meta["interval"] == 24 * 3600
    assert job.timeout == backup_settings.backup_job_timeout_seconds == 4 * 3600
    assert register_schedule(scheduler=scheduler, settings=settings)["periodic-backup"] == "cancelled"


def test_the_backup_job_runs_as_a_recorded_run(backup_app, settings):
    app = backup_app(database_url=settings.database_url)  # a worker: the application's restricted role
    with app.app_context():
        outcome = worker_jobs.backup()
    assert outcome["status"] == "succeeded" and outcome["file"].startswith("wallet-")
    [run] = runs(app, "backup")
    assert run.trigger == "scheduled" and run.counts["sha256"] == outcome["sha256"]


BASE_ENV = {"DATABASE_URL": "postgresql://u@db/wallet", "REDIS_URL": "redis://cache:6379/0",
            "JWT_SECRET": "j" * 40, "JWT_REFRESH_SECRET": "r" * 40, "MOONPAY_WEBHOOK_SECRET": "wk",
            "MOONPAY_SECRET_KEY": "sk", "APP_ENV": "development"}


def test_a_malformed_backup_key_stops_the_app_naming_it_without_printing_it():
    for bad in ("AGE-SECRET-KEY-1NOTAKEYATALL", "correct horse battery staple", "age1" + "q" * 58):
        with pytest.raises(ConfigError) as refused:
            load_settings({**BASE_ENV, "BACKUP_ENCRYPTION_KEY": bad})
        assert list(refused.value.problems) == ["BACKUP_ENCRYPTION_KEY"]
        assert bad not in str(refused.value)
        assert "AGE-SECRET-KEY-1" in str(refused.value)


def test_a_bucket_without_a_key_is_refused_and_a_generated_key_accepted(backup_key):
    with pytest.raises(ConfigError) as refused:
        load_settings({**BASE_ENV, "BACKUP_S3_BUCKET": "wallet-backups"})
    assert "BACKUP_ENCRYPTION_KEY" in refused.value.problems
    settings = load_settings({**BASE_ENV, "BACKUP_S3_BUCKET": "wallet-backups", "BACKUP_ENCRYPTION_KEY": backup_key,
                              "BACKUP_S3_PREFIX": "prod/wallet/"})
    assert settings.backups_configured and settings.backup_s3_prefix == "prod/wallet/"
    assert settings.backup_s3_endpoint_url is None and settings.aws_access_key_id is None
    assert not load_settings(BASE_ENV).backups_configured
    with pytest.raises(ConfigError) as bad_prefix:
        load_settings({**BASE_ENV, "BACKUP_S3_PREFIX": "/prod"})
    assert list(bad_prefix.value.problems) == ["BACKUP_S3_PREFIX"]
