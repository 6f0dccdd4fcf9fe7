"""The ledger's invariants as set-based SQL: each check is one statement over the whole ledger.

- Cached balances: a user wallet's `balance` equals the sum of its entries (system wallets have no
  cached balance: their balance is the sum).
- Balanced transactions: a transaction has at least two entries, all in its currency, summing to
  zero.
- balance_after chains: within a user wallet, in entry order, each entry's `balance_after` is the
  previous one's plus its amount (the first one's is its amount). A break at or before the
  wallet's latest cache correction (`balance_corrections.last_entry_id`) is history the
  correction already answered, not a new finding.

The database refuses writes that would break these (see DATABASE_SAFETY.md), so a finding means
something went around it: a manual UPDATE with the triggers off, a restore gone wrong, a bug in
PostgreSQL. These functions only read; jobs and the CLI decide what to do with what they find.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import text

from wallet_api.extensions import db


@dataclass(frozen=True)
class WalletBalance:
    wallet_id: uuid.UUID
    user_id: uuid.UUID
    currency: str
    cached: Decimal
    ledger: Decimal

    @property
    def difference(self) -> Decimal:
        """cached - ledger: positive when the cache shows more than the entries hold."""
        return self.cached - self.ledger

    @property
    def ok(self) -> bool:
        return self.cached == self.ledger


@dataclass(frozen=True)
class UnbalancedTransaction:
    transaction_id: uuid.UUID
    currency: str
    kind: str
    total: Decimal | None   # sum of its entries (None when it has none)
    legs: int
    currencies_ok: bool     # every entry is in the transaction's currency


@dataclass(frozen=True)
class BrokenChain:
    wallet_id: uuid.UUID
    currency: str
    first_broken_entry_id: int
    broken_entries: int


_SUMS = "SELECT wallet_id, sum(amount) AS total FROM ledger_entries GROUP BY wallet_id"

_MISMATCHED_BALANCES = text(f"""
    SELECT w.id AS wallet_id, w.user_id, w.currency, w.balance AS cached, coalesce(s.total, 0) AS ledger
    FROM wallets w LEFT JOIN ({_SUMS}) s ON s.wallet_id = w.id
    WHERE w.user_id IS NOT NULL AND w.balance <> coalesce(s.total, 0)
    ORDER BY w.id LIMIT :limit""")

_UNBALANCED_TRANSACTIONS = text("""
    SELECT t.id AS transaction_id, t.currency, t.kind, e.total, coalesce(e.legs, 0) AS legs,
           coalesce(e.low_currency = t.currency AND e.high_currency = t.currency, false) AS currencies_ok
    FROM ledger_transactions t LEFT JOIN (
        SELECT transaction_id, sum(amount) AS total, count(*) AS legs,
               min(currency) AS low_currency, max(currency) AS high_currency
        FROM ledger_entries GROUP BY transaction_id) e ON e.transaction_id = t.id
    WHERE e.transaction_id IS NULL OR e.total <> 0 OR e.legs < 2
       OR e.low_currency <> t.currency OR e.high_currency <> t.currency
    ORDER BY t.created_at, t.id LIMIT :limit""")

# Transactions touching one wallet (the CLI's --fix refuses to rewrite a cache built on them).
_UNBALANCED_TRANSACTIONS_OF_WALLET = text("""
    SELECT t.id AS transaction_id, t.currency, t.kind, e.total, e.legs,
           (e.low_currency = t.currency AND e.high_currency = t.currency) AS currencies_ok
    FROM ledger_transactions t JOIN (
        SELECT transaction_id, sum(amount) AS total, count(*) AS legs,
               min(currency) AS low_currency, max(currency) AS high_currency
        FROM ledger_entries
        WHERE transaction_id IN (SELECT transaction_id FROM ledger_entries WHERE wallet_id = :wallet_id)
        GROUP BY transaction_id) e ON e.transaction_id = t.id
    WHERE e.total <> 0 OR e.legs < 2 OR e.low_currency <> t.currency OR e.high_currency <> t.currency
    ORDER BY t.created_at, t.id""")

_BROKEN_CHAINS = text("""
    WITH chain AS (
        SELECT e.wallet_id, e.id, e.amount, e.balance_after,
               lag(e.balance_after) OVER w AS previous_after, lag(e.id) OVER w AS previous_id
        FROM ledger_entries e JOIN wallets u ON u.id = e.wallet_id AND u.user_id IS NOT NULL
        WINDOW w AS (PARTITION BY e.wallet_id ORDER BY e.id)
    ), corrected AS (
        SELECT wallet_id, max(last_entry_id) AS watermark FROM balance_corrections GROUP BY wallet_id
    )
    SELECT c.wallet_id, w.currency, min(c.id) AS first_broken_entry_id, count(*) AS broken_entries
    FROM chain c JOIN wallets w ON w.id = c.wallet_id LEFT JOIN corrected k ON k.wallet_id = c.wallet_id
    WHERE c.balance_after IS DISTINCT FROM coalesce(c.previous_after, 0) + c.amount
      AND (k.watermark IS NULL OR c.previous_id > k.watermark)
    GROUP BY c.wallet_id, w.currency
    ORDER BY c.wallet_id LIMIT :limit""")

# Every user wallet with its ledger sum, the same set-based join as the job's check but unfiltered
# and unordered, so rows stream out of a server-side cursor as PostgreSQL produces them: the
# client's memory stays flat however many wallets there are.
_ALL_WALLET_BALANCES = text(f"""
    SELECT w.id AS wallet_id, w.user_id, w.currency, w.balance AS cached, coalesce(s.total, 0) AS ledger
    FROM wallets w LEFT JOIN ({_SUMS}) s ON s.wallet_id = w.id
    WHERE w.user_id IS NOT NULL""")

_ONE_WALLET_BALANCE = text("""
    SELECT w.id AS wallet_id, w.user_id, w.currency, w.balance AS cached,
           coalesce((SELECT sum(e.amount) FROM ledger_entries e WHERE e.wallet_id = w.id), 0) AS ledger
    FROM wallets w WHERE w.user_id IS NOT NULL AND w.id = :wallet_id""")


def mismatched_balances(*, limit: int) -> list[WalletBalance]:
    """User wallets whose cached balance differs from their entries, at most `limit`, in id order."""
    return [WalletBalance(**row) for row in db.session.execute(_MISMATCHED_BALANCES, {"limit": limit}).mappings()]


def unbalanced_transactions(*, limit: int) -> list[UnbalancedTransaction]:
    """Transactions that do not sum to zero, have fewer than two entries, or mix currencies."""
    rows = db.session.execute(_UNBALANCED_TRANSACTIONS, {"limit": limit}).mappings()
    return [UnbalancedTransaction(**row) for row in rows]


def unbalanced_transactions_of_wallet(*, wallet_id: uuid.UUID) -> list[UnbalancedTransaction]:
    rows = db.session.execute(_UNBALANCED_TRANSACTIONS_OF_WALLET, {"wallet_id": wallet_id}).mappings()
    return [UnbalancedTransaction(**row) for row in rows]


def broken_chains(*, limit: int) -> list[BrokenChain]:
    """User wallets whose balance_after chain breaks after their latest correction, first break first."""
    return [BrokenChain(**row) for row in db.session.execute(_BROKEN_CHAINS, {"limit": limit}).mappings()]


def stream_wallet_balances(*, wallet_id: uuid.UUID | None = None, batch: int = 2000) -> Iterator[WalletBalance]:
    """Every user wallet (or the one given) with its ledger sum, streamed (constant memory, no order)."""
    if wallet_id is not None:
        rows = db.session.execute(_ONE_WALLET_BALANCE, {"wallet_id": wallet_id}).mappings()
    else:
        rows = db.session.execute(_ALL_WALLET_BALANCES.execution_options(stream_results=True, yield_per=batch)
                                  ).mappings()
    for row in rows:
        yield WalletBalance(**row)


def count_user_wallets(*, wallet_id: uuid.UUID | None = None) -> int:
    return db.session.execute(text(
        "SELECT count(*) FROM wallets WHERE user_id IS NOT NULL AND (CAST(:w AS uuid) IS NULL OR id = :w)"),
        {"w": wallet_id}).scalar_one()


def for_long_reads(*, statement_timeout_ms: int, work_mem: str = "64MB") -> None:
    """Give the current transaction room for whole-ledger scans (the app's statement timeout is short)."""
    db.session.execute(text("SELECT set_config('statement_timeout', :t, true), set_config('work_mem', :m, true)"),
                       {"t": f"{int(statement_timeout_ms)}ms", "m": work_mem})
