"""The ledger's invariants, checked on a restored database (`flask restore`, `flask restore-test`).

The same set-based checks as the wallet reconciliation job (`ledger_checks`), run on another
database through an app context bound to it; nothing is flagged or alerted there, the findings
are returned for the restore to print. A restored copy must hold exactly what the ledger holds:
any finding fails the restore.
"""
from __future__ import annotations

from sqlalchemy import text

from wallet_api.backups.postgres import app_context_on
from wallet_api.backups.service import LedgerReport
from wallet_api.extensions import db
from wallet_api.reconciliation import ledger_checks

SHOWN = 20


def check_restored_ledger(database_url: str, *, statement_timeout_ms: int) -> LedgerReport:
    """Cached balances, balanced transactions and balance_after chains of the database at `database_url`."""
    with app_context_on(database_url):
        ledger_checks.for_long_reads(statement_timeout_ms=statement_timeout_ms)
        wallets = ledger_checks.count_user_wallets()
        transactions = db.session.execute(text("SELECT count(*) FROM ledger_transactions")).scalar_one()
        mismatched = ledger_checks.mismatched_balances(limit=SHOWN + 1)
        unbalanced = ledger_checks.unbalanced_transactions(limit=SHOWN + 1)
        chains = ledger_checks.broken_chains(limit=SHOWN + 1)
        db.session.rollback()
    problems = [f"cached balance: wallet {m.wallet_id} ({m.currency}) caches {m.cached:f} but its entries sum to "
                f"{m.ledger:f}" for m in mismatched[:SHOWN]]
    problems += [f"unbalanced transaction: {t.transaction_id} ({t.kind}, {t.currency}) has {t.legs} entries summing "
                 f"to {'-' if t.total is None else f'{t.total:f}'}{'' if t.currencies_ok else ', mixed currencies'}"
                 for t in unbalanced[:SHOWN]]
    problems += [f"balance_after chain: wallet {c.wallet_id} ({c.currency}) breaks at entry {c.first_broken_entry_id} "
                 f"({c.broken_entries} entries)" for c in chains[:SHOWN]]
    for name, found in (("cached balance", mismatched), ("unbalanced transaction", unbalanced),
                        ("balance_after chain", chains)):
        if len(found) > SHOWN:
            problems.append(f"{name}: more than {SHOWN} findings; run `flask reconcile-balance` against the copy")
    return LedgerReport(wallets_checked=wallets, transactions_checked=transactions, problems=problems)
