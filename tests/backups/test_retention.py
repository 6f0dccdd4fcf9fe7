"""Retention deletes the backups taken more than BACKUP_RETENTION_DAYS ago, by the time in their
names, locally and in S3; it keeps the newest whatever its age and never touches a foreign file."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from wallet_api.backups import service
from wallet_api.backups.storage import backup_name

NOW = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.timezone.utc)


def days_ago(days: float) -> str:
    return backup_name(NOW - dt.timedelta(days=days))


def test_local_backups_older_than_the_retention_are_deleted_and_nothing_else(backup_settings):
    directory = Path(backup_settings.backup_dir)
    directory.mkdir(parents=True)
    names = [days_ago(d) for d in (45, 31, 30.5, 29, 1, 0)]
    for name in names:
        (directory / name).write_bytes(b"age-encryption.org/v1\n")
    foreign = ["notes.txt", "wallet-latest.dump.age", ".wallet-20200101T000000Z.dump.age.partial",
               "wallet-20200101T000000Z.dump"]
    for name in foreign:
        (directory / name).write_bytes(b"x")
    # A recent backup whose file looks old (copied, synced): its name decides, not its mtime.
    old_time = (NOW - dt.timedelta(days=400)).timestamp()
    os.utime(directory / days_ago(1), (old_time, old_time))

    pruned = service.prune(settings=backup_settings.replace(backup_retention_days=30), now=NOW)

    assert pruned == {"local": [str(directory / n) for n in names[:3]]}
    assert sorted(p.name for p in directory.iterdir()) == sorted(names[3:] + foreign)


def test_the_newest_backup_is_kept_however_old(backup_settings):
    directory = Path(backup_settings.backup_dir)
    directory.mkdir(parents=True)
    for days in (90, 60):
        (directory / days_ago(days)).write_bytes(b"x")
    pruned = service.prune(settings=backup_settings.replace(backup_retention_days=30), now=NOW)
    assert pruned["local"] == [str(directory / days_ago(90))]
    assert [p.name for p in directory.iterdir()] == [days_ago(60)]


def test_s3_backups_older_than_the_retention_are_deleted_under_the_prefix_only(backup_settings, s3_settings):
    overrides, s3 = s3_settings
    bucket = overrides["backup_s3_bucket"]
    names = [days_ago(d) for d in (40, 8, 6, 0)]
    for name in names:
        s3.put_object(Bucket=bucket, Key=f"prod/db/{name}", Body=b"age")
    others = [f"staging/db/{days_ago(40)}", f"prod/db/{days_ago(40)}.manifest", "prod/db/README"]
    for key in others:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")

    pruned = service.prune(settings=backup_settings.replace(backup_retention_days=7, **overrides), now=NOW)

    assert pruned["s3"] == [f"s3://{bucket}/prod/db/{names[0]}", f"s3://{bucket}/prod/db/{names[1]}"]
    left = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert left == sorted([f"prod/db/{n}" for n in names[2:]] + others)


def test_a_backup_prunes_after_it_succeeds(backup_app, backup_settings, s3_settings, app_ctx):
    overrides, s3 = s3_settings
    directory = Path(backup_settings.backup_dir)
    directory.mkdir(parents=True)
    stale = backup_name(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=31))
    (directory / stale).write_bytes(b"x")
    s3.put_object(Bucket=overrides["backup_s3_bucket"], Key=f"prod/db/{stale}", Body=b"x")

    result = service.take_backup(settings=backup_settings.replace(**overrides))

    assert result.pruned_local == [str(directory / stale)]
    assert result.pruned_remote == [f"s3://{overrides['backup_s3_bucket']}/prod/db/{stale}"]
    assert [p.name for p in directory.iterdir()] == [result.name]
    assert [item["Key"] for item in s3.list_objects_v2(Bucket=overrides["backup_s3_bucket"])["Contents"]] == [
        f"prod/db/{result.name}"]
