"""Where backups live: BACKUP_DIR on this machine and, when configured, an S3-compatible bucket.

Names carry the time the dump started, in UTC: `wallet-20261128T031500Z.dump.age`, the same name
locally and under BACKUP_S3_PREFIX in the bucket. Retention reads that time from the name (not a
file's mtime or an object's LastModified, which a copy or a sync changes) and never touches a
file or object whose name is not one of ours.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

from wallet_api.config import Settings

NAME_PREFIX = "wallet-"
NAME_SUFFIX = ".dump.age"
_STAMP = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(rf"^{re.escape(NAME_PREFIX)}(\d{{8}}T\d{{6}}Z){re.escape(NAME_SUFFIX)}$")
# Multipart parts of 64 MiB, two at a time: an upload holds at most ~128 MiB of the file in memory
# whatever its size, and 10,000 parts (S3's limit) reach 640 GiB.
_TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20, max_concurrency=2)


def backup_name(taken_at: dt.datetime) -> str:
    return f"{NAME_PREFIX}{taken_at.astimezone(dt.timezone.utc).strftime(_STAMP)}{NAME_SUFFIX}"


def taken_at(name: str) -> dt.datetime | None:
    """The time in one of our backup names; None for any other name."""
    match = _NAME.match(name)
    if match is None:
        return None
    return dt.datetime.strptime(match.group(1), _STAMP).replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class StoredBackup:
    name: str
    taken_at: dt.datetime
    size: int
    location: str       # a path, or s3://bucket/key


def expired(backups: list[StoredBackup], *, retention_days: int, now: dt.datetime) -> list[StoredBackup]:
    """Backups taken more than `retention_days` before `now`; the newest one is kept whatever its age."""
    if not backups:
        return []
    newest = max(backups, key=lambda b: b.taken_at)
    cutoff = now - dt.timedelta(days=retention_days)
    return sorted((b for b in backups if b.taken_at < cutoff and b is not newest), key=lambda b: b.taken_at)


class LocalStore:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        return self.directory / name

    def list(self) -> list[StoredBackup]:
        if not self.directory.is_dir():
            return []
        found = []
        for entry in os.scandir(self.directory):
            when = taken_at(entry.name)
            if when is not None and entry.is_file():
                found.append(StoredBackup(name=entry.name, taken_at=when, size=entry.stat().st_size,
                                          location=entry.path))
        return sorted(found, key=lambda b: b.taken_at)

    def delete(self, backup: StoredBackup) -> None:
        self.path(backup.name).unlink(missing_ok=True)

    def open(self, name: str) -> BinaryIO:
        return open(self.path(name), "rb")


class S3Store:
    """Backups in BACKUP_S3_BUCKET under BACKUP_S3_PREFIX (any S3-compatible service via BACKUP_S3_ENDPOINT_URL)."""

    def __init__(self, settings: Settings):
        self.bucket = settings.backup_s3_bucket
        self.prefix = settings.backup_s3_prefix
        # Path-style addressing for S3-compatible services (MinIO, R2, ...), AWS's default otherwise.
        style = "path" if settings.backup_s3_endpoint_url else "auto"
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=settings.backup_s3_endpoint_url, region_name=settings.backup_s3_region,
            aws_access_key_id=settings.aws_access_key_id, aws_secret_access_key=settings.aws_secret_access_key,
            config=BotoConfig(s3={"addressing_style": style}, retries={"max_attempts": 5, "mode": "standard"}))

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def upload(self, path: Path, name: str) -> str:
        """Upload a finished backup file (multipart, streamed from disk); returns its s3:// location."""
        self.client.upload_file(str(path), self.bucket, self.key(name), Config=_TRANSFER,
                                ExtraArgs={"ContentType": "application/octet-stream"})
        return self.location(name)

    def list(self) -> list[StoredBackup]:
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix):]
                when = taken_at(name)
                if when is not None:
                    found.append(StoredBackup(name=name, taken_at=when, size=item["Size"],
                                              location=self.location(name)))
        return sorted(found, key=lambda b: b.taken_at)

    def delete(self, backup: StoredBackup) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(backup.name))

    def open(self, name: str) -> BinaryIO:
        """The object's body as a stream (read in chunks, never whole)."""
        return self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]

    def open_location(self, location: str) -> BinaryIO:
        bucket, _, key = location.removeprefix("s3://").partition("/")
        return self.client.get_object(Bucket=bucket, Key=key)["Body"]
