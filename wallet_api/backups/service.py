"""Take a backup, restore one and verify it, test that restores work (see the package docstring).

These functions do the work and report progress through a callback; the CLI and the worker job
wrap them in `run_job` (a recorded run, never two at once, a JOB_CRASH alert when one fails).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from wallet_api.backups import crypto, postgres
from wallet_api.backups.storage import LocalStore, S3Store, backup_name, expired
from wallet_api.config import Settings
from wallet_api.db_types import utcnow
from wallet_api.jobs.models import RunStatus, Trigger
from wallet_api.jobs.runner import run_job

BACKUP_JOB = "backup"
RESTORE_TEST_JOB = "restore-test"
SCRATCH_PREFIX = "wallet_restore_test_"
PROGRESS_EVERY_BYTES = 64 * 2**20
PROBLEMS_SHOWN = 20

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


class BackupError(RuntimeError):
    """A backup or restore did not complete; the message says why and never holds a secret."""


class RestoreRefused(BackupError):
    """The target database holds data and overwriting it was not asked for (or is never allowed)."""


class RestoreTestFailed(BackupError):
    """The restore test restored a backup that does not verify."""


@dataclass(frozen=True)
class LedgerReport:
    """What the ledger checks found in a restored database (given by the reconciliation package)."""
    wallets_checked: int
    transactions_checked: int
    problems: list[str]


# (database_url) -> LedgerReport: the ledger invariants of a restored database.
CheckLedger = Callable[[str], LedgerReport]


@dataclass(frozen=True)
class BackupResult:
    name: str
    path: Path
    size: int                # encrypted bytes on disk
    dumped_bytes: int        # pg_dump's output (custom format, compressed)
    sha256: str              # of the encrypted file
    seconds: float
    uploaded_to: str | None = None
    pruned_local: list[str] = field(default_factory=list)
    pruned_remote: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        return {"file": self.name, "bytes": self.size, "dumped_bytes": self.dumped_bytes, "sha256": self.sha256,
                "seconds": round(self.seconds, 1), "uploaded_to": self.uploaded_to,
                "pruned_local": len(self.pruned_local), "pruned_remote": len(self.pruned_remote)}


@dataclass(frozen=True)
class RestoreReport:
    source: str
    database: str
    restored_bytes: int
    revisions: list[str]
    heads: list[str]
    wallets_checked: int
    transactions_checked: int
    problems: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems


# --- backup ----------------------------------------------------------------------------------


def take_backup(*, settings: Settings, progress: Progress = _quiet, now: dt.datetime | None = None) -> BackupResult:
    """Dump DATABASE_URL, encrypt it into BACKUP_DIR, upload it when S3 is configured, prune old backups."""
    key = _key(settings)
    started, clock = now or utcnow(), time.monotonic()
    directory = Path(settings.backup_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = backup_name(started)
    final, partial = directory / name, directory / f".{name}.partial"
    if final.exists():
        raise BackupError(f"{final} already exists")
    progress(f"Dumping {postgres.database_name(settings.database_url)} to {final} (encrypted for "
             f"{crypto.public_key(key)}) ...")
    with tempfile.TemporaryFile() as errors:
        dump = postgres.start_dump(settings.database_url, bin_dir=settings.backup_pg_bin_dir, stderr=errors)
        dumped = _Counting(dump.stdout, progress=progress, verb="dumped")
        try:
            with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as raw:
                sink = _Hashing(raw)
                crypto.encrypt(dumped, sink, key=key)
                raw.flush()
                os.fsync(raw.fileno())
            code = dump.wait()
        except BaseException:
            dump.kill()
            dump.wait()
            partial.unlink(missing_ok=True)
            raise
        finally:
            dump.stdout.close()
        if code != 0:
            partial.unlink(missing_ok=True)
            raise BackupError(f"pg_dump failed (exit status {code}): {_tail(errors)}")
    os.rename(partial, final)
    _fsync_directory(directory)
    progress(f"Wrote {final} ({_mib(sink.size)}, {_mib(dumped.total)} dumped).")

    uploaded_to, pruned_remote = None, []
    if settings.backup_s3_bucket:
        remote = S3Store(settings)
        progress(f"Uploading to {remote.location(name)} ...")
        uploaded_to = remote.upload(final, name)
        progress(f"Uploaded {uploaded_to}.")
        pruned_remote = _prune(remote, settings=settings, now=started, progress=progress)
    pruned_local = _prune(LocalStore(directory), settings=settings, now=started, progress=progress)
    return BackupResult(name=name, path=final, size=sink.size, dumped_bytes=dumped.total, sha256=sink.hexdigest(),
                        seconds=time.monotonic() - clock, uploaded_to=uploaded_to, pruned_local=pruned_local,
                        pruned_remote=pruned_remote)


def prune(*, settings: Settings, now: dt.datetime | None = None, progress: Progress = _quiet) -> dict[str, list[str]]:
    """Delete backups older than BACKUP_RETENTION_DAYS, locally and in S3 (the newest of each is always kept)."""
    now = now or utcnow()
    pruned = {"local": _prune(LocalStore(settings.backup_dir), settings=settings, now=now, progress=progress)}
    if settings.backup_s3_bucket:
        pruned["s3"] = _prune(S3Store(settings), settings=settings, now=now, progress=progress)
    return pruned


def _prune(store, *, settings: Settings, now: dt.datetime, progress: Progress) -> list[str]:
    gone = expired(store.list(), retention_days=settings.backup_retention_days, now=now)
    for backup in gone:
        store.delete(backup)
        progress(f"Pruned {backup.location} (older than {settings.backup_retention_days} days).")
    return [backup.location for backup in gone]


def backup_job(*, settings: Settings, progress: Progress = _quiet) -> dict:
    """The work of one `backup` job run: its counts."""
    return take_backup(settings=settings, progress=progress).counts()


# --- restore ---------------------------------------------------------------------------------


def restore(*, settings: Settings, source: str, into: str, check_ledger: CheckLedger, migrations_dir: str | Path,
            overwrite: bool = False, privileges: bool = True, progress: Progress = _quiet) -> RestoreReport:
    """Decrypt `source` into database `into` (created when missing), then verify it; never overwrites data
    unless `overwrite`, and never the non-empty database of DATABASE_URL."""
    key = _key(settings)
    clock = time.monotonic()
    target_url = _target_url(settings.database_url, into)
    name = postgres.database_name(target_url)
    reader, described = open_source(settings=settings, source=source)
    with reader:
        created = _prepare_target(settings, target_url, name, overwrite=overwrite, progress=progress)
        progress(f"Restoring {described} into database {name} ...")
        try:
            restored = _restore_stream(reader, target_url, key=key, settings=settings, privileges=privileges,
                                       progress=progress)
        except BaseException:
            if created:
                postgres.drop(target_url, name)
            raise
    progress(f"Restored {_mib(restored)}. Verifying migrations and the ledger ...")
    return _verify(target_url, source=described, database=name, restored=restored, check_ledger=check_ledger,
                   migrations_dir=migrations_dir, started=clock)


def verify(*, database_url: str, check_ledger: CheckLedger, migrations_dir: str | Path) -> RestoreReport:
    """Verify a database as a restore would (migrations at the code's head, the ledger's invariants)."""
    return _verify(database_url, source="-", database=postgres.database_name(database_url), restored=0,
                   check_ledger=check_ledger, migrations_dir=migrations_dir, started=time.monotonic())


def open_source(*, settings: Settings, source: str) -> tuple[BinaryIO, str]:
    """A stream of backup `source`: `latest`, an s3:// location, a path, or a name in BACKUP_DIR."""
    local = LocalStore(settings.backup_dir)
    if source == "latest":
        stores = ([S3Store(settings)] if settings.backup_s3_bucket else []) + [local]
        for store in stores:
            found = store.list()
            if found:
                return store.open(found[-1].name), found[-1].location
        raise BackupError("No backup found (BACKUP_S3_BUCKET, then BACKUP_DIR).")
    if source.startswith("s3://"):
        return S3Store(settings).open_location(source), source
    path = Path(source)
    if not path.is_file() and local.path(source).is_file():
        path = local.path(source)
    if not path.is_file():
        raise BackupError(f"No backup file {source} (give a path, a name in BACKUP_DIR, an s3:// location or "
                          "`latest`).")
    return open(path, "rb"), str(path)


def _target_url(database_url: str, into: str) -> str:
    if "://" in into or "=" in into:
        return into
    return postgres.with_database(database_url, postgres.check_name(into))


def _prepare_target(settings: Settings, url: str, name: str, *, overwrite: bool, progress: Progress) -> bool:
    """Make sure database `name` exists and is empty; True when this call created it."""
    if not postgres.exists(url, name):
        postgres.create(url, name)
        progress(f"Created database {name}.")
        return True
    if postgres.is_empty(url, name):
        return False
    if postgres.same_database(settings.database_url, url):
        raise RestoreRefused(f"Database {name} is the one DATABASE_URL names and holds data: restore into a new "
                             "database, verify it, then point DATABASE_URL at it.")
    if not overwrite:
        raise RestoreRefused(f"Database {name} exists and holds data; pass --overwrite to drop and recreate it.")
    progress(f"Dropping and recreating database {name} (--overwrite) ...")
    postgres.drop(url, name)
    postgres.create(url, name)
    return True


def _restore_stream(reader: BinaryIO, url: str, *, key: str, settings: Settings, privileges: bool,
                    progress: Progress) -> int:
    """Decrypt into pg_restore's stdin. On any failure pg_restore is killed before it sees the end of its
    input, so its single transaction never commits a part."""
    counting = _Counting(reader, progress=progress, verb="restored")
    with tempfile.TemporaryFile() as errors:
        process = postgres.start_restore(url, bin_dir=settings.backup_pg_bin_dir, stderr=errors,
                                         privileges=privileges)
        try:
            crypto.decrypt(counting, process.stdin, key=key)
        except BaseException as exc:
            exited = process.poll()
            if exited is None:
                process.kill()
            _close_quietly(process.stdin)
            process.wait()
            if isinstance(exc, crypto.DecryptionFailed):
                raise BackupError(str(exc)) from None
            if exited not in (None, 0):  # pg_restore stopped first (the write into its stdin failed)
                raise BackupError(f"pg_restore failed (exit status {exited}): {_tail(errors)}") from None
            raise
        _close_quietly(process.stdin)
        code = process.wait()
        if code != 0:
            raise BackupError(f"pg_restore failed (exit status {code}): {_tail(errors)}")
    return counting.total


def _verify(url: str, *, source: str, database: str, restored: int, check_ledger: CheckLedger,
            migrations_dir: str | Path, started: float) -> RestoreReport:
    problems = []
    revisions, heads = postgres.migration_revisions(url), postgres.code_heads(migrations_dir)
    if revisions != heads:
        problems.append(f"migrations: the database is at {', '.join(sorted(revisions)) or 'no revision'}; "
                        f"this code's head is {', '.join(sorted(heads))}")
    try:
        ledger = check_ledger(url)
    except Exception as exc:  # noqa: BLE001 - a schema too broken to check is itself the finding
        ledger = LedgerReport(wallets_checked=0, transactions_checked=0,
                              problems=[f"ledger: the checks could not run: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}"])
    problems.extend(ledger.problems)
    return RestoreReport(source=source, database=database, restored_bytes=restored, revisions=sorted(revisions),
                         heads=sorted(heads), wallets_checked=ledger.wallets_checked,
                         transactions_checked=ledger.transactions_checked, problems=problems,
                         seconds=time.monotonic() - started)


# --- restore test ----------------------------------------------------------------------------


def restore_test(*, settings: Settings, check_ledger: CheckLedger, migrations_dir: str | Path,
                 source: str | None = None, progress: Progress = _quiet) -> dict:
    """Back up (unless `source` names a backup to test), restore into a scratch database on the same
    server, verify, drop the scratch database. Raises RestoreTestFailed when the restore does not verify."""
    # Scratch databases are named after the database they test (a short hash of its name), so runs for
    # other databases on the server are never touched; for this one we hold the restore-test lock, so a
    # scratch database found now was left by an earlier run that was killed.
    source_name = postgres.database_name(settings.database_url)
    prefix = f"{SCRATCH_PREFIX}{hashlib.sha256(source_name.encode()).hexdigest()[:8]}_"
    for leftover in postgres.databases_like(settings.database_url, prefix):
        progress(f"Dropping {leftover}, left by an interrupted restore test.")
        postgres.drop(settings.database_url, leftover)
    if source is None:
        outcome = run_job(BACKUP_JOB, lambda: backup_job(settings=settings, progress=progress), trigger=Trigger.CLI)
        if outcome["status"] != RunStatus.SUCCEEDED:
            raise BackupError(f"Could not take a backup to test: {outcome.get('skipped', outcome['status'])}")
        source = outcome["uploaded_to"] or str(Path(settings.backup_dir) / outcome["file"])
    scratch = f"{prefix}{utcnow():%Y%m%d%H%M%S}"
    try:
        report = restore(settings=settings, source=source, into=scratch, check_ledger=check_ledger,
                         migrations_dir=migrations_dir, progress=progress)
    finally:
        postgres.drop(settings.database_url, scratch)
        progress(f"Dropped scratch database {scratch}.")
    if not report.ok:
        raise RestoreTestFailed(f"The restore of {report.source} does not verify: " + "; ".join(report.problems))
    return {"source": report.source, "restored_bytes": report.restored_bytes, "revision": ",".join(report.revisions),
            "wallets_checked": report.wallets_checked, "transactions_checked": report.transactions_checked,
            "seconds": round(report.seconds, 1)}


# --- helpers ---------------------------------------------------------------------------------


def _key(settings: Settings) -> str:
    if not settings.backup_encryption_key:
        raise BackupError("BACKUP_ENCRYPTION_KEY is not set: generate one with `bin/backup --generate-key` "
                          "(docs/DATABASE_OPERATIONS.md).")
    return settings.backup_encryption_key


class _Counting:
    """A reader that counts what passes through it and reports progress every 64 MiB."""

    def __init__(self, inner: BinaryIO, *, progress: Progress, verb: str):
        self.inner, self.progress, self.verb = inner, progress, verb
        self.total, self._next, self._started = 0, PROGRESS_EVERY_BYTES, time.monotonic()

    def read(self, size: int = -1) -> bytes:
        chunk = self.inner.read(size)
        self.total += len(chunk)
        if self.total >= self._next:
            self._next += PROGRESS_EVERY_BYTES
            rate = self.total / max(time.monotonic() - self._started, 1e-6)
            self.progress(f"  {self.verb} {_mib(self.total)} ({_mib(rate)}/s)")
        return chunk


class _Hashing:
    """A writer that hashes and counts what passes through it (the encrypted file's sha256)."""

    def __init__(self, inner: IO[bytes]):
        self.inner, self.size, self._hash = inner, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _close_quietly(stream) -> None:
    try:
        stream.close()
    except OSError:  # a broken pipe: the process is gone, its exit status tells
        pass


def _tail(errors: IO[bytes], limit: int = 2000) -> str:
    errors.seek(0)
    text = errors.read().decode("utf-8", "replace").strip()
    return (text[-limit:] if text else "no error output").replace("\n", " | ")


def _mib(n: float) -> str:
    """A byte count for people: 812 B, 47.6 KiB, 312.4 MiB, 1.2 GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"

