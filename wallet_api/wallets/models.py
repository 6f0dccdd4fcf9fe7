"""Wallets and the append-only double-entry ledger.

- A wallet holds one currency. User wallets belong to a user (one per currency); system wallets
  (`system_account` set: MoonPay clearing, platform adjustments) hold the other side of money
  that enters or leaves the platform, so every currency's entries always sum to zero.
- A ledger transaction is one movement of money; its entries are the legs. Entries are signed
  (credit > 0, debit < 0) and a transaction's entries sum to zero per currency. A deferred
  constraint trigger checks that at commit, so no code path can write an unbalanced movement.
- Ledger rows are never updated or deleted (triggers refuse it); a mistake is corrected by a new
  transaction.
- A user wallet's `balance` caches SUM(entries.amount) and each entry records `balance_after`;
  both are written under the wallet's row lock. System wallets are not locked and do not cache
  a balance (it is derived from entries, and their entries have no `balance_after`): a single
  row that every deposit locked would serialise all deposits (the "hot row" ceiling).
- A cached balance that disagrees with the entries is corrected only by rewriting the cache
  (`ledger.rewrite_cached_balance`, from `flask reconcile-balance --fix`), never the entries; each
  rewrite is recorded in the append-only `balance_corrections` table.
- Every entry carries a unique `idempotency_key` `{source}:{reference}:{walletId}:{action}` and
  every transaction the caller's key, so a replayed operation finds its first result instead of
  moving money twice.
"""
import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import (BigInteger, CheckConstraint, ForeignKey, ForeignKeyConstraint, Identity, Index, String,
                        Text, UniqueConstraint, Uuid, text)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from wallet_api.db_types import Money, timestamp_column, uuid_pk
from wallet_api.extensions import db


class SystemAccount:
    MOONPAY_CLEARING = "moonpay_clearing"
    PLATFORM_ADJUSTMENTS = "platform_adjustments"
    ALL = (MOONPAY_CLEARING, PLATFORM_ADJUSTMENTS)


class Wallet(db.Model):
    __tablename__ = "wallets"
    __table_args__ = (
        Index("ix_wallets_needs_reconciliation", "created_at", "id", postgresql_where=text("needs_reconciliation")),
        CheckConstraint("(user_id IS NULL) <> (system_account IS NULL)", name="owner_xor_system"),
        CheckConstraint("system_account IS NOT NULL OR balance >= 0", name="user_balance_non_negative"),
        # Target of the entries' (wallet_id, currency) foreign key: an entry cannot change currency.
        UniqueConstraint("id", "currency", name="uq_wallets_id_currency"),
        Index("uq_wallets_user_currency", "user_id", "currency", unique=True,
              postgresql_where=text("user_id IS NOT NULL")),
        Index("uq_wallets_system_currency", "system_account", "currency", unique=True,
              postgresql_where=text("system_account IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id", ondelete="RESTRICT"))
    system_account: Mapped[str | None] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(10))
    balance: Mapped[Decimal] = mapped_column(Money, default=Decimal(0), server_default=text("0"))
    needs_reconciliation: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    created_at: Mapped[dt.datetime] = timestamp_column()
    updated_at: Mapped[dt.datetime] = timestamp_column()

class LedgerTransaction(db.Model):
    __tablename__ = "ledger_transactions"

    id: Mapped[uuid.UUID] = uuid_pk()
    kind: Mapped[str] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(10))
    amount: Mapped[Decimal] = mapped_column(Money)
    reference: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    initiated_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id"))
    meta: Mapped[dict] = mapped_column("metadata", JSONB, default=dict, server_default=text("'{}'::jsonb"))
    created_at: Mapped[dt.datetime] = timestamp_column()

    entries: Mapped[list["LedgerEntry"]] = relationship(back_populates="transaction",
                                                        order_by="LedgerEntry.id")

    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        # Provider reconciliation finds on-ramp credits by MoonPay id and by creation time.
        Index("ix_ledger_transactions_onramp_reference", "reference", postgresql_where=text("kind = 'onramp_credit'")),
        Index("ix_ledger_transactions_onramp_created", "created_at", postgresql_where=text("kind = 'onramp_credit'")),
    )


class LedgerEntry(db.Model):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_non_zero"),
        ForeignKeyConstraint(["wallet_id", "currency"], ["wallets.id", "wallets.currency"],
                             name="fk_ledger_entries_wallet_currency"),
        Index("ix_ledger_entries_wallet_id_id", "wallet_id", "id"),
    )

    # An identity, not a UUID: within one user wallet, entries are numbered under the wallet's row
    # lock, so id order is commit order and a cursor on it never skips a late-committing entry.
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    transaction_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("ledger_transactions.id"), index=True)
    wallet_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    currency: Mapped[str] = mapped_column(String(10))
    amount: Mapped[Decimal] = mapped_column(Money)
    balance_after: Mapped[Decimal | None] = mapped_column(Money)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[dt.datetime] = timestamp_column()

    transaction: Mapped[LedgerTransaction] = relationship(back_populates="entries")


class BalanceCorrection(db.Model):
    """One rewrite of a user wallet's cached balance to its ledger sum: before, after, who, when, why."""

    __tablename__ = "balance_corrections"
    __table_args__ = (Index("ix_balance_corrections_wallet_created", "wallet_id", "created_at"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    wallet_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("wallets.id", ondelete="RESTRICT"))
    currency: Mapped[str] = mapped_column(String(10))
    balance_before: Mapped[Decimal] = mapped_column(Money)
    balance_after: Mapped[Decimal] = mapped_column(Money)
    # The wallet's newest entry when the cache was rewritten: balance_after values of older entries
    # were written from the wrong cache and are history, not a new break (see reconciliation).
    last_entry_id: Mapped[int | None] = mapped_column(BigInteger)
    corrected_by: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    job_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("job_runs.id", ondelete="RESTRICT"))
    created_at: Mapped[dt.datetime] = timestamp_column()
