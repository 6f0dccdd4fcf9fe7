"""Runs in a worker (the periodic wallet-reconciliation job): check the ledger's invariants, flag and
alert, never correct.

Detect first, fix second: a wallet whose cached balance or balance_after chain disagrees with its
entries is flagged `needs_reconciliation` and gets one BALANCE_MISMATCH alert (critical) per
problem; so does every transaction that does not balance. Nothing is rewritten: a human reads the
alert, investigates, and corrects through `flask reconcile-balance --fix` or an audited admin
adjustment. Repeated runs bump the open alert instead of adding one. The credit-spike check runs
here too, for every user. Runbook: docs/RECONCILIATION.md.
"""
from __future__ import annotations

import datetime as dt

import structlog
from flask import current_app
from sqlalchemy import text

from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import AlertSpec, raise_alerts
from wallet_api.db_types import utcnow
from wallet_api.extensions import db
from wallet_api.onramp.credit_spike import check_credit_spikes
from wallet_api.reconciliation import ledger_checks
from wallet_api.reconciliation.ledger_checks import BrokenChain, UnbalancedTransaction, WalletBalance

log = structlog.get_logger(__name__)

# Findings beyond this many per check are counted and summed up in one alert, not one alert each.
MAX_ALERTS_PER_CHECK = 1000


def run_wallet_reconciliation(*, now: dt.datetime | None = None) -> dict:
    """Run every ledger check, flag the wallets involved, raise alerts; returns the counts of the run."""
    settings = current_app.config["SETTINGS"]
    ledger_checks.for_long_reads(statement_timeout_ms=settings.reconciliation_statement_timeout_ms)
    wallets_checked = ledger_checks.count_user_wallets()
    mismatches = ledger_checks.mismatched_balances(limit=MAX_ALERTS_PER_CHECK + 1)
    unbalanced = ledger_checks.unbalanced_transactions(limit=MAX_ALERTS_PER_CHECK + 1)
    chains = ledger_checks.broken_chains(limit=MAX_ALERTS_PER_CHECK + 1)

    specs = [*(_balance_alert(m) for m in mismatches[:MAX_ALERTS_PER_CHECK]),
             *(_transaction_alert(t) for t in unbalanced[:MAX_ALERTS_PER_CHECK]),
             *(_chain_alert(c) for c in chains[:MAX_ALERTS_PER_CHECK])]
    for name, found in (("cached_balance", mismatches), ("unbalanced_transaction", unbalanced),
                        ("balance_after_chain", chains)):
        if len(found) > MAX_ALERTS_PER_CHECK:
            specs.append(AlertSpec(
                alert_type=AlertType.BALANCE_MISMATCH, subject=f"overflow:{name}",
                title=f"More than {MAX_ALERTS_PER_CHECK} ledger findings of one kind ({name})",
                message=f"The {name} check found more than {MAX_ALERTS_PER_CHECK} problems; the first "
                        f"{MAX_ALERTS_PER_CHECK} have alerts of their own. Run `flask reconcile-balance`.",
                metadata={"check": name, "reported": MAX_ALERTS_PER_CHECK}))
    flagged = _flag_wallets([m.wallet_id for m in mismatches] + [c.wallet_id for c in chains],
                            [t.transaction_id for t in unbalanced])
    raised = raise_alerts(specs)
    spikes = check_credit_spikes(now=now or utcnow())
    db.session.commit()
    counts = {"wallets_checked": wallets_checked, "balance_mismatches": len(mismatches),
              "unbalanced_transactions": len(unbalanced), "broken_chains": len(chains),
              "wallets_flagged": flagged, "alerts_new": len(raised.new), "alerts_repeated": len(raised.repeated),
              "credit_spikes": spikes}
    if mismatches or unbalanced or chains:
        log.error("ledger_reconciliation_findings", **counts)
    return counts


def _flag_wallets(wallet_ids: list, transaction_ids: list) -> int:
    """Set needs_reconciliation on the given user wallets and on those touched by the given transactions."""
    if not wallet_ids and not transaction_ids:
        return 0
    return db.session.execute(text("""
        UPDATE wallets SET needs_reconciliation = true
        WHERE user_id IS NOT NULL AND NOT needs_reconciliation
          AND (id = ANY(CAST(:wallets AS uuid[]))
               OR id IN (SELECT wallet_id FROM ledger_entries WHERE transaction_id = ANY(CAST(:txs AS uuid[]))))"""),
        {"wallets": wallet_ids, "txs": transaction_ids}).rowcount


def _balance_alert(found: WalletBalance) -> AlertSpec:
    return AlertSpec(
        alert_type=AlertType.BALANCE_MISMATCH, subject=f"wallet:{found.wallet_id}",
        title=f"Wallet {found.wallet_id}: cached balance differs from its ledger by {found.difference:f} "
              f"{found.currency}",
        message=f"The cached balance is {found.cached:f} {found.currency} but the wallet's ledger entries sum "
                f"to {found.ledger:f}. The wallet is flagged; nothing was corrected.",
        metadata={"check": "cached_balance", "wallet_id": found.wallet_id, "user_id": found.user_id,
                  "currency": found.currency, "expected": found.ledger, "actual": found.cached,
                  "difference": found.difference})


def _transaction_alert(found: UnbalancedTransaction) -> AlertSpec:
    total = "no entries" if found.total is None else f"entries summing to {found.total:f}"
    return AlertSpec(
        alert_type=AlertType.BALANCE_MISMATCH, subject=f"transaction:{found.transaction_id}",
        title=f"Ledger transaction {found.transaction_id} does not balance",
        message=f"Transaction {found.transaction_id} ({found.kind}, {found.currency}) has {found.legs} "
                f"entr{'y' if found.legs == 1 else 'ies'} with {total}"
                f"{'' if found.currencies_ok else ', in another currency than its own'}.",
        metadata={"check": "unbalanced_transaction", "transaction_id": found.transaction_id,
                  "currency": found.currency, "kind": found.kind, "sum": found.total, "legs": found.legs,
                  "currencies_ok": found.currencies_ok})


def _chain_alert(found: BrokenChain) -> AlertSpec:
    return AlertSpec(
        alert_type=AlertType.BALANCE_MISMATCH, subject=f"chain:{found.wallet_id}",
        title=f"Wallet {found.wallet_id}: balance_after chain broken at entry {found.first_broken_entry_id}",
        message=f"{found.broken_entries} entr{'y' if found.broken_entries == 1 else 'ies'} of wallet "
                f"{found.wallet_id} record a balance_after that is not the previous one plus the entry's "
                f"amount, first at entry {found.first_broken_entry_id}.",
        metadata={"check": "balance_after_chain", "wallet_id": found.wallet_id, "currency": found.currency,
                  "first_broken_entry_id": found.first_broken_entry_id,
                  "broken_entries": found.broken_entries})
