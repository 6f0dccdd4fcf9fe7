"""What a readiness check needs to know about backups, from the recorded job runs (no S3 call, no disk scan)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flask import current_app

from wallet_api.config import Settings
from wallet_api.db_types import utcnow
from wallet_api.jobs.runner import last_success

# Restore a backup into a scratch database at least this often (docs/DATABASE_OPERATIONS.md).
RESTORE_TEST_MAX_AGE = dt.timedelta(days=90)
BACKUP_INTERVAL = dt.timedelta(days=1)


@dataclass(frozen=True)
class BackupStatus:
    configured: bool                        # BACKUP_ENCRYPTION_KEY set: the daily backup job is scheduled
    offsite: bool                           # BACKUP_S3_BUCKET set: backups leave this machine
    last_backup_at: dt.datetime | None      # the latest successful `backup` run
    last_backup: str | None                 # where it went (s3:// location, else the file name)
    last_restore_test_at: dt.datetime | None  # the latest successful `restore-test` run
    backup_overdue: bool                    # configured, and no successful backup within a day (+ its timeout)
    restore_test_due: bool                  # configured, and no successful restore test within 90 days

    @property
    def ok(self) -> bool:
        return self.configured and not self.backup_overdue and not self.restore_test_due


def backup_status(*, settings: Settings | None = None, now: dt.datetime | None = None) -> BackupStatus:
    """Backups configured?, the last good backup and the last good restore test (needs an app context)."""
    settings = settings or current_app.config["SETTINGS"]
    now = now or utcnow()
    backup, restore_test = last_success("backup"), last_success("restore-test")
    backup_at = backup.finished_at if backup else None
    tested_at = restore_test.finished_at if restore_test else None
    grace = BACKUP_INTERVAL + dt.timedelta(seconds=settings.backup_job_timeout_seconds)
    configured = settings.backups_configured
    return BackupStatus(
        configured=configured, offsite=bool(settings.backup_s3_bucket), last_backup_at=backup_at,
        last_backup=(backup.counts.get("uploaded_to") or backup.counts.get("file")) if backup else None,
        last_restore_test_at=tested_at,
        backup_overdue=configured and (backup_at is None or now - backup_at > grace),
        restore_test_due=configured and (tested_at is None or now - tested_at > RESTORE_TEST_MAX_AGE))
