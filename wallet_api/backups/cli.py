"""`flask backup`, `flask restore SOURCE --into DB`, `flask restore-test` (bin/backup, bin/restore,
bin/restore-test). Progress goes to stderr, results to stdout; exit status 1 on any failure.

The ledger check a restore runs belongs to the reconciliation package, above this one: the CLI
composer (wallet_api/cli.py) passes it in as `check_ledger`.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

import click
from flask import Flask, current_app

from wallet_api.backups import service
from wallet_api.backups.service import BACKUP_JOB, RESTORE_TEST_JOB, BackupError, CheckLedger, RestoreReport
from wallet_api.config import Settings
from wallet_api.errors import describe_exception
from wallet_api.jobs.models import RunStatus, Trigger
from wallet_api.jobs.runner import run_job

# (settings) -> CheckLedger
LedgerCheckFactory = Callable[[Settings], CheckLedger]


def _progress(message: str) -> None:
    click.echo(message, err=True)


def register(app: Flask, *, check_ledger: LedgerCheckFactory) -> None:
    def migrations_dir() -> str:
        return current_app.extensions["migrate"].directory

    @app.cli.command("backup")
    def backup() -> None:
        """Dump the database, encrypt it into BACKUP_DIR, upload it to S3 when configured, prune old backups."""
        settings = current_app.config["SETTINGS"]
        outcome = _run(BACKUP_JOB, lambda: service.backup_job(settings=settings, progress=_progress))
        click.echo(f"Backup {outcome['file']}: {outcome['bytes']} bytes encrypted, sha256 {outcome['sha256']}, "
                   f"{outcome['seconds']} s" + (f"; uploaded to {outcome['uploaded_to']}" if outcome['uploaded_to']
                                                else "; not uploaded (BACKUP_S3_BUCKET is not set)")
                   + f"; pruned {outcome['pruned_local']} local, {outcome['pruned_remote']} remote "
                     f"(run {outcome['run_id']}).")

    @app.cli.command("restore")
    @click.argument("source")
    @click.option("--into", "into", required=True,
                  help="Database to restore into (a name on DATABASE_URL's server, or a URL); created when missing.")
    @click.option("--overwrite", is_flag=True, help="Drop and recreate INTO when it holds data.")
    @click.option("--no-privileges", is_flag=True, help="Skip the dump's GRANTs (when its roles do not exist here).")
    def restore(source: str, into: str, overwrite: bool, no_privileges: bool) -> None:
        """Decrypt backup SOURCE (a path, a name in BACKUP_DIR, s3://bucket/key or `latest`) into a database,
        then verify it: migrations at this code's head, the ledger's invariants. Exit 1 when it does not verify."""
        settings = current_app.config["SETTINGS"]
        try:
            report = service.restore(settings=settings, source=source, into=into,
                                     check_ledger=check_ledger(settings), migrations_dir=migrations_dir(),
                                     overwrite=overwrite, privileges=not no_privileges, progress=_progress)
        except Exception as exc:  # noqa: BLE001 - the operator gets one line and exit status 1
            click.echo(f"Restore failed: {_reason(exc)}", err=True)
            sys.exit(1)
        _echo_report(report)
        sys.exit(0 if report.ok else 1)

    @app.cli.command("restore-test")
    @click.option("--from", "source", help="Test this backup (as for `restore`) instead of taking a new one.")
    def restore_test(source: str | None) -> None:
        """Back up, restore into a scratch database, verify, drop it; recorded as a `restore-test` job run."""
        settings = current_app.config["SETTINGS"]
        outcome = _run(RESTORE_TEST_JOB, lambda: service.restore_test(
            settings=settings, check_ledger=check_ledger(settings), migrations_dir=migrations_dir(), source=source,
            progress=_progress))
        click.echo(f"Restore test passed: {outcome['source']} restored and verified at revision "
                   f"{outcome['revision']} ({outcome['wallets_checked']} wallets, {outcome['transactions_checked']} "
                   f"transactions checked) in {outcome['seconds']} s; recorded as run {outcome['run_id']}.")


def _run(name: str, work) -> dict:
    """Run `work` as a recorded CLI job run; exit 1 (the run recorded as failed, JOB_CRASH raised) on failure."""
    try:
        outcome = run_job(name, work, trigger=Trigger.CLI)
    except Exception as exc:  # noqa: BLE001 - recorded and alerted by run_job; the operator gets one line
        click.echo(f"{name} failed: {_reason(exc)}", err=True)
        sys.exit(1)
    if outcome["status"] != RunStatus.SUCCEEDED:
        click.echo(f"{name} did not run: {outcome.get('skipped', outcome['status'])}", err=True)
        sys.exit(1)
    return outcome


def _reason(exc: Exception) -> str:
    """Our own errors say it all; anything else (a database or S3 error) is named with its type."""
    return str(exc) if isinstance(exc, (BackupError, ValueError)) else describe_exception(exc)


def _echo_report(report: RestoreReport) -> None:
    click.echo(f"Restored {report.source} into {report.database} ({report.restored_bytes} bytes) in "
               f"{report.seconds:.1f} s.")
    click.echo(f"  migrations: database at {', '.join(report.revisions) or 'no revision'}; "
               f"code head {', '.join(report.heads)}")
    click.echo(f"  ledger: {report.wallets_checked} user wallets, {report.transactions_checked} transactions checked")
    if report.ok:
        click.echo("Verified: migrations at head, every cached balance equals its entries, every transaction "
                   "sums to zero.")
        return
    click.echo(f"NOT VERIFIED: {len(report.problems)} problem(s):")
    for problem in report.problems:
        click.echo(f"  - {problem}")
