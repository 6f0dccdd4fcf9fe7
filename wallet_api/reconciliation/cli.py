"""`flask reconcile-balance [WALLET_ID] [--fix] [--force] [--all] [--operator NAME]`.

Read-only by default: streams every user wallet (or the one given) with the sum of its entries
through a server-side cursor (memory stays flat however many wallets there are), prints a table of
the ones that are off (all of them with --all) and a summary, and checks that the ledger's
transactions balance. Exit status 0 when everything agrees, 1 when anything is off.

--fix rewrites only cached balances, never entries: for each wallet that is off it first checks
that the wallet's transactions balance (refusing, and naming them, when one does not), asks for
confirmation unless --force, then sets the cache to the ledger sum under the wallet's lock
(`ledger.rewrite_cached_balance`), clears its flag and records the correction (before, after, who,
when) in `balance_corrections`. Every run is a job run (`reconcile-balance`, trigger `cli`).
"""
from __future__ import annotations

import contextlib
import getpass
import sys
import uuid
from decimal import Context, Decimal

import click
from flask import Flask, current_app

from wallet_api.jobs.models import Trigger
from wallet_api.jobs.runner import run_job
from wallet_api.reconciliation import ledger_checks
from wallet_api.reconciliation.ledger_checks import WalletBalance
from wallet_api.wallets import currencies, ledger

JOB_NAME = "reconcile-balance"
PROGRESS_FROM = 10_000        # show a progress bar (on stderr) from this many wallets
TRANSACTIONS_SHOWN = 50
_WIDE = Context(prec=80)  # quantize every NUMERIC(38,18) value without an overflow
COLUMNS = (("wallet", 36), ("currency", 8), ("cached", 28), ("ledger", 28), ("difference", 28), ("status", 8))


def register(app: Flask) -> None:
    @app.cli.command("reconcile-balance")
    @click.argument("wallet_id", required=False, type=click.UUID)
    @click.option("--fix", is_flag=True, help="Rewrite cached balances that differ to the ledger sum (audited).")
    @click.option("--force", is_flag=True, help="With --fix: do not ask for confirmation (for scripts).")
    @click.option("--all", "show_all", is_flag=True, help="List every wallet checked, not only those that are off.")
    @click.option("--operator", help="Who makes the corrections (recorded with each); default: the OS user.")
    def reconcile_balance(wallet_id: uuid.UUID | None, fix: bool, force: bool, show_all: bool,
                          operator: str | None) -> None:
        """Compare cached wallet balances with their ledger entries; optionally fix the cache."""
        if force and not fix:
            raise click.UsageError("--force only applies to --fix.")
        if wallet_id is not None and ledger_checks.count_user_wallets(wallet_id=wallet_id) == 0:
            raise click.BadParameter(f"no user wallet {wallet_id}", param_hint="WALLET_ID")
        run_id = uuid.uuid4()
        outcome = run_job(JOB_NAME, lambda: _reconcile(wallet_id=wallet_id, fix=fix, force=force,
                                                      show_all=show_all, operator=operator or _os_user(),
                                                      run_id=run_id),
                          trigger=Trigger.CLI, run_id=run_id)
        if outcome.get("status") == "skipped":
            click.echo(f"Another reconcile-balance run is in progress ({outcome['skipped']}).", err=True)
            sys.exit(1)
        sys.exit(0 if outcome.get("clean") else 1)


def _reconcile(*, wallet_id: uuid.UUID | None, fix: bool, force: bool, show_all: bool, operator: str,
               run_id: uuid.UUID) -> dict:
    settings = current_app.config["SETTINGS"]
    ledger_checks.for_long_reads(statement_timeout_ms=settings.reconciliation_statement_timeout_ms)
    total = ledger_checks.count_user_wallets(wallet_id=wallet_id)
    _echo_row(name for name, _ in COLUMNS)
    off = _scan(wallet_id=wallet_id, total=total, show_all=show_all)
    unbalanced = (ledger_checks.unbalanced_transactions_of_wallet(wallet_id=wallet_id) if wallet_id
                  else ledger_checks.unbalanced_transactions(limit=TRANSACTIONS_SHOWN + 1))
    click.echo(f"\nChecked {total} wallet(s): {len(off)} with a cached balance that differs from the ledger; "
               f"{_count(unbalanced, TRANSACTIONS_SHOWN)} unbalanced transaction(s).")
    for tx in unbalanced[:TRANSACTIONS_SHOWN]:
        click.echo(f"  transaction {tx.transaction_id} ({tx.kind}, {tx.currency}): {tx.legs} entries, "
                   f"sum {tx.total if tx.total is not None else '-'}"
                   f"{'' if tx.currencies_ok else ', mixed currencies'}")
    fixed, refused = ([], []) if not (fix and off) else _fix(off, force=force, operator=operator, run_id=run_id)
    still_off = len(off) - len(fixed)
    clean = still_off == 0 and not unbalanced
    click.echo("Clean: every checked balance agrees with the ledger." if clean else
               f"Not clean: {still_off} wallet(s) off, {_count(unbalanced, TRANSACTIONS_SHOWN)} unbalanced "
               "transaction(s). See docs/RECONCILIATION.md.")
    return {"wallets_checked": total, "balance_mismatches": len(off), "unbalanced_transactions": len(unbalanced),
            "fixed": len(fixed), "refused": len(refused), "clean": clean}


def _scan(*, wallet_id: uuid.UUID | None, total: int, show_all: bool) -> list[WalletBalance]:
    off = []
    rows = ledger_checks.stream_wallet_balances(wallet_id=wallet_id)
    progress = total >= PROGRESS_FROM
    with click.progressbar(rows, length=total, label="Checking wallets", file=sys.stderr) if progress \
            else contextlib.nullcontext(rows) as scanned:
        for found in scanned:
            if not found.ok:
                off.append(found)
            if show_all or not found.ok:
                _echo_balance(found, "OK" if found.ok else "MISMATCH")
    return off


def _fix(off: list[WalletBalance], *, force: bool, operator: str, run_id: uuid.UUID) -> tuple[list, list]:
    refused, candidates = [], []
    for found in off:
        broken = ledger_checks.unbalanced_transactions_of_wallet(wallet_id=found.wallet_id)
        if broken:
            refused.append(found)
            click.echo(f"REFUSED {found.wallet_id}: its transaction(s) "
                       f"{', '.join(str(t.transaction_id) for t in broken)} do not balance; the ledger itself "
                       "needs a correcting transaction first.", err=True)
        else:
            candidates.append(found)
    if not candidates:
        return [], refused
    question = (f"Rewrite the cached balance of {len(candidates)} wallet(s) to the sum of their ledger entries? "
                "(Entries are not touched; each correction is recorded.)")
    if not force and not click.confirm(question, default=False):
        click.echo("Nothing was changed.")
        return [], refused
    fixed = []
    for found in candidates:
        try:
            rewrite = ledger.rewrite_cached_balance(
                wallet_id=found.wallet_id, corrected_by=operator, job_run_id=run_id,
                reason=f"flask reconcile-balance --fix: cached {found.cached:f}, ledger {found.ledger:f}")
        except ledger.CorrectionRefused as exc:
            refused.append(found)
            click.echo(f"REFUSED {found.wallet_id}: {exc.message}", err=True)
            continue
        fixed.append(found)
        _echo_balance(WalletBalance(wallet_id=found.wallet_id, user_id=found.user_id, currency=found.currency,
                                    cached=rewrite.after, ledger=rewrite.after), "FIXED")
        click.echo(f"  cached {_amount(rewrite.before, found.currency)} -> {_amount(rewrite.after, found.currency)}"
                   f" (correction {rewrite.correction_id}, by {operator})")
    return fixed, refused


def _echo_balance(found: WalletBalance, status: str) -> None:
    _echo_row([str(found.wallet_id), found.currency, _amount(found.cached, found.currency),
               _amount(found.ledger, found.currency), _amount(found.difference, found.currency), status])


def _echo_row(cells) -> None:
    click.echo("  ".join(f"{cell:<{width}}" if i < 2 else f"{cell:>{width}}"
                         for i, ((_, width), cell) in enumerate(zip(COLUMNS, cells))))


def _amount(value: Decimal, currency: str) -> str:
    """At the currency's precision when that is exact; otherwise every digit (a corrupt value shows as is)."""
    at_precision = value.quantize(currencies.quantum(currency), context=_WIDE)
    exact = at_precision if at_precision == value else value
    return f"{exact:f}"


def _count(found: list, shown: int) -> str:
    return f"more than {shown}" if len(found) > shown else str(len(found))


def _os_user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "cli:unknown"
