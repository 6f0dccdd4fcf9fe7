"""Wallet use cases: open and list wallets, read the ledger, transfer, admin adjustments.

Ownership is checked here: a wallet or transfer of another user is reported as not found (404),
never as forbidden, so ids leak nothing. Money moves only through `ledger`; this module decides
who may ask for which movement and builds the ledger idempotency keys
(`{source}:{reference}:{walletId}:{action}`), with the request's Idempotency-Key reference when
the client sent one (see idempotency.request_reference) and a fresh one otherwise.
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.exc import IntegrityError

from wallet_api.errors import Conflict, NotFound
from wallet_api.extensions import db
from wallet_api.pagination import InvalidCursor, Page, decode_cursor, encode_cursor, keyset_page, positive_bigint
from wallet_api.wallets import ledger
from wallet_api.wallets.ledger import WalletNotFound
from wallet_api.wallets.models import SystemAccount, Wallet

TRANSFER_KIND = "transfer"
ADMIN_KINDS = {ledger.CREDIT: "admin_credit", ledger.DEBIT: "admin_debit"}


@dataclass(frozen=True)
class TransferView:
    id: uuid.UUID
    from_wallet_id: uuid.UUID
    to_wallet_id: uuid.UUID
    amount: Decimal
    currency: str
    reference: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class AdjustmentView:
    id: uuid.UUID
    kind: str
    wallet_id: uuid.UUID
    counter_wallet_id: uuid.UUID
    amount: Decimal
    currency: str
    balance_after: Decimal
    reason: str
    initiated_by: uuid.UUID
    created_at: dt.datetime


def create_wallet(*, user_id: uuid.UUID, currency: str) -> Wallet:
    """Open the user's wallet in `currency`; 409 when they already have one."""
    wallet = Wallet(user_id=user_id, currency=currency)
    db.session.add(wallet)
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) == "uq_wallets_user_currency":
            raise Conflict(f"You already have a {currency} wallet.", error="wallet_exists") from None
        raise
    return wallet


# The read paths' statements are built once: constructing a statement and its cache key on every
# call cost more than running it.
_USER_WALLETS = (select(Wallet).where(Wallet.user_id == bindparam("user_id"))
                 .order_by(Wallet.created_at, Wallet.currency))
_USER_WALLET = select(Wallet).where(Wallet.id == bindparam("wallet_id"), Wallet.user_id == bindparam("user_id"))
_VISIBLE_WALLET = (select(Wallet.id)
                   .where(Wallet.id.in_(bindparam("wallet_ids", expanding=True)),
                          Wallet.user_id == bindparam("user_id"))
                   .limit(1))
# One round trip for the ownership check and the page: no row at all means no such wallet of the
# user; a row of NULLs is the wallet's empty page.
_LEDGER_PAGE = text("""
    SELECT page.id, page.transaction_id, page.amount, page.balance_after, page.currency, page.created_at,
           page.kind, page.reference
    FROM wallets w
    LEFT JOIN LATERAL (
        SELECT e.id, e.transaction_id, e.amount, e.balance_after, e.currency, e.created_at, t.kind, t.reference
        FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
        WHERE e.wallet_id = w.id AND (CAST(:before AS bigint) IS NULL OR e.id < :before)
        ORDER BY e.id DESC
        LIMIT :fetch) page ON true
    WHERE w.id = :wallet_id AND w.user_id = :user_id
    ORDER BY page.id DESC""")


def list_wallets(*, user_id: uuid.UUID) -> list[Wallet]:
    """The user's wallets, oldest first."""
    return list(db.session.scalars(_USER_WALLETS, {"user_id": user_id}))


def get_wallet(*, user_id: uuid.UUID, wallet_id: uuid.UUID) -> Wallet:
    """The user's wallet; 404 when it does not exist or belongs to someone else."""
    wallet = db.session.scalar(_USER_WALLET, {"wallet_id": wallet_id, "user_id": user_id})
    if wallet is None:
        raise WalletNotFound("Wallet not found.")
    return wallet


def list_all_wallets(*, needs_reconciliation: bool | None, limit: int, cursor: str | None) -> Page:
    """User wallets of every user (for admins), newest first, optionally only (un)flagged ones."""
    query = select(Wallet).where(Wallet.user_id.is_not(None))
    if needs_reconciliation is not None:
        query = query.where(Wallet.needs_reconciliation.is_(needs_reconciliation))
    return keyset_page(query, Wallet, limit=limit, cursor=cursor)


def ledger_page(*, user_id: uuid.UUID, wallet_id: uuid.UUID, limit: int, cursor: str | None) -> Page:
    """Entries of the user's wallet, newest first, `limit` per page after `cursor`."""
    try:
        (before,) = decode_cursor(cursor, positive_bigint) if cursor is not None else (None,)
    except InvalidCursor:
        get_wallet(user_id=user_id, wallet_id=wallet_id)  # someone else's wallet stays a 404
        raise
    rows = db.session.execute(_LEDGER_PAGE, {"wallet_id": wallet_id, "user_id": user_id, "before": before,
                                             "fetch": limit + 1}).mappings().all()
    if not rows:
        raise WalletNotFound("Wallet not found.")
    if rows[0]["id"] is None:
        rows = []
    items = [dict(row) for row in rows[:limit]]
    next_cursor = encode_cursor(items[-1]["id"]) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


def get_user_wallet(*, wallet_id: uuid.UUID) -> Wallet:
    """Any user's wallet (for admins); 404 for a system wallet or an unknown id."""
    wallet = db.session.scalar(select(Wallet).where(Wallet.id == wallet_id, Wallet.user_id.is_not(None)))
    if wallet is None:
        raise WalletNotFound("Wallet not found.")
    return wallet


def ledger_page_of_user_wallet(*, wallet_id: uuid.UUID, limit: int, cursor: str | None) -> Page:
    """Entries of any user's wallet (for admins), paged exactly as its owner sees them."""
    wallet = get_user_wallet(wallet_id=wallet_id)
    return ledger_page(user_id=wallet.user_id, wallet_id=wallet_id, limit=limit, cursor=cursor)


def count_user_wallets(*, needs_reconciliation: bool | None) -> int:
    """How many user wallets there are, optionally only (un)flagged ones."""
    query = select(func.count()).select_from(Wallet).where(Wallet.user_id.is_not(None))
    if needs_reconciliation is not None:
        query = query.where(Wallet.needs_reconciliation.is_(needs_reconciliation))
    return db.session.scalar(query)


def create_transfer(*, user_id: uuid.UUID, from_wallet_id: uuid.UUID, to_wallet_id: uuid.UUID,
                    amount: Decimal, reference: str | None = None, request_ref: str | None = None) -> TransferView:
    """Move money from the user's wallet to any user wallet of the same currency (the ledger checks
    ownership, currency, precision and funds under its locks)."""
    result = ledger.transfer(
        from_wallet_id=from_wallet_id, to_wallet_id=to_wallet_id, amount=amount, source_owner_id=user_id,
        idempotency_key=ledger.entry_key(source="transfer", reference=request_ref or _fresh_reference(),
                                         wallet_id=from_wallet_id, action=ledger.DEBIT),
        reference=reference, metadata={"channel": "api"}, initiated_by=user_id)
    return _transfer_view(result)


def get_transfer(*, user_id: uuid.UUID, transfer_id: uuid.UUID) -> TransferView:
    """A transfer touching one of the user's wallets; 404 otherwise."""
    found = ledger.get_transaction(transaction_id=transfer_id)
    if found is None or found.kind != TRANSFER_KIND:
        raise NotFound("Transfer not found.", error="transfer_not_found")
    visible = db.session.scalar(_VISIBLE_WALLET, {"wallet_ids": [leg.wallet_id for leg in found.entries],
                                                  "user_id": user_id})
    if visible is None:
        raise NotFound("Transfer not found.", error="transfer_not_found")
    return _transfer_view(found)


def adjust_balance(*, admin_id: uuid.UUID, wallet_id: uuid.UUID, action: str, amount: Decimal, reason: str,
                   request_ref: str | None = None) -> AdjustmentView:
    """Admin credit or debit of a user wallet, balanced against the platform adjustments wallet."""
    move = ledger.credit if action == ledger.CREDIT else ledger.debit
    result = move(
        wallet_id=wallet_id, amount=amount, kind=ADMIN_KINDS[action],
        idempotency_key=ledger.entry_key(source="admin", reference=request_ref or _fresh_reference(),
                                         wallet_id=wallet_id, action=action),
        counter_account=SystemAccount.PLATFORM_ADJUSTMENTS,
        metadata={"reason": reason, "admin_id": admin_id, "channel": "admin_api"}, initiated_by=admin_id)
    user_leg = result.leg(wallet_id)
    counter = next(leg for leg in result.entries if leg.wallet_id != wallet_id)
    return AdjustmentView(id=result.transaction_id, kind=result.kind, wallet_id=wallet_id,
                          counter_wallet_id=counter.wallet_id, amount=result.amount, currency=result.currency,
                          balance_after=user_leg.balance_after, reason=reason, initiated_by=admin_id,
                          created_at=result.created_at)


def _transfer_view(result: ledger.LedgerResult) -> TransferView:
    source = next(leg for leg in result.entries if leg.amount < 0)
    destination = next(leg for leg in result.entries if leg.amount > 0)
    return TransferView(id=result.transaction_id, from_wallet_id=source.wallet_id,
                        to_wallet_id=destination.wallet_id, amount=result.amount, currency=result.currency,
                        reference=result.reference, created_at=result.created_at)


def _fresh_reference() -> str:
    return f"req-{uuid.uuid4().hex}"
