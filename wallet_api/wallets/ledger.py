"""The ledger service: the only code that moves money.

Accounts and transactions
    Every balance lives in a wallet (one currency). User wallets belong to a user; system wallets
    (`SystemAccount`: MoonPay clearing, platform adjustments; one per currency) are the other side
    of money that enters or leaves the platform. A movement is one `LedgerTransaction` whose
    `LedgerEntry` legs are signed amounts: credit > 0 (the wallet gains), debit < 0 (it loses).
    The legs of a transaction sum to zero, so every currency's entries sum to zero across all
    wallets. `credit`, `debit` and `transfer` build balanced transactions by construction, and a
    deferred constraint trigger refuses an unbalanced one at COMMIT whatever code wrote it. Ledger
    rows are append-only (triggers refuse UPDATE/DELETE): a mistake is corrected by a new
    transaction.

        credit(user W, 10 USD)        W +10.00   moonpay_clearing/USD -10.00
        debit(user W, 4 USD)          W  -4.00   platform_adjustments/USD +4.00
        transfer(A -> B, 3 USD)       A  -3.00   B +3.00

Locks
    Each operation runs in one database transaction. It locks every USER wallet it touches with
    SELECT ... FOR UPDATE in one statement ordered by wallet id (two transfers A->B and B->A lock in
    the same order, so they cannot deadlock), bounded by `SET LOCAL lock_timeout`
    (settings.ledger_lock_timeout_ms; a timeout raises LedgerBusy, a 503 `resource_busy`, having
    written nothing). Funds are checked after the lock (no check-then-act race), then the entries
    are written with `balance_after` and the cached `wallet.balance` is updated, and the
    transaction commits. Because an entry of a user wallet is only ever inserted under that
    wallet's lock, entry ids of one user wallet are in commit order: the ledger cursor relies on it.

No hot rows
    System wallets are never locked and their `balance` column is never written: their balance is
    SUM(entries) (`derived_balance`) and their entries carry `balance_after = NULL`. Credits to
    many user wallets from the one clearing wallet therefore do not queue behind one row. (Each
    entry's foreign key takes FOR KEY SHARE on its wallet row; that mode is compatible between
    transactions, see bench/ledger.py for the measurement.)

Idempotency
    The caller names each operation with the key of its primary (user-wallet) entry,
    `{source}:{reference}:{walletId}:{action}` (see `entry_key`); it is also the transaction's key,
    and the counter entry's key is derived from it with the counter wallet's id and the opposite
    action (so `{source}:{reference}` must name the operation itself: two operations sharing it on
    different user wallets would share the counter key, and the second is refused with
    IdempotencyKeyCollision). A key not ending in the primary entry's `:{walletId}:{action}` is a
    programming error (ValueError). Both columns are UNIQUE. After taking the locks the key is
    looked up: a concurrent duplicate waited on the same wallet lock and now sees the first one's
    commit, so it returns the existing transaction with `replayed=True`, moving nothing and raising
    nothing. The unique constraints are the backstop: an IntegrityError on them is rolled back (to a
    SAVEPOINT when the caller owns the transaction) and answered with the existing transaction.

Transaction ownership
    With `commit=True` (the default) the function owns the transaction: it commits on success and
    rolls back on any failure (which also discards whatever the caller had pending in the session).
    With `commit=False` the caller owns it (the webhook worker updates its own rows and commits
    once): the function works inside a SAVEPOINT and only flushes, so a refused operation or an
    idempotent replay leaves the caller's transaction usable; the wallet locks are held until the
    caller commits or rolls back. `credit(commit=False, savepoint=False)` skips the SAVEPOINT (two
    round trips) for a caller that rolls its whole transaction back on any error: a refusal then
    leaves that transaction unusable, and a unique-key conflict is raised, not replayed.

Lost connections
    The app does not ping a pooled connection before using it (wallet_api/database.py). When an
    owned transaction finds its connection dead before COMMIT was sent, it wrote nothing, so it
    is started again once on a new connection; a disconnect during COMMIT is raised (the key makes
    the caller's retry safe). With `commit=False` the caller's transaction is lost with the
    connection, so nothing is retried.

Exact arithmetic: amounts are `Decimal`s validated against the wallet's currency precision, and
sums are computed in `amounts.MONEY_CONTEXT`, which raises rather than rounds.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal

import structlog
from flask import current_app
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session
from structlog.contextvars import bound_contextvars

from wallet_api import audit, metrics
from wallet_api.database import lost_before_commit
from wallet_api.db_types import metadata_json
from wallet_api.errors import ApiError, Conflict, NotFound, ServiceUnavailable, Unprocessable, field_error
from wallet_api.extensions import db
from wallet_api.prepared_statements import PreparedStatement, sql_for
from wallet_api.queues import after_commit
from wallet_api.wallets import amounts
from wallet_api.wallets.models import SystemAccount, Wallet
from wallet_api.wallets.system_wallets import ensure_system_wallets

log = structlog.get_logger(__name__)

CREDIT = "credit"
DEBIT = "debit"
OPPOSITE = {CREDIT: DEBIT, DEBIT: CREDIT}
MAX_KEY_LENGTH = 255
MAX_KIND_LENGTH = 32

# PostgreSQL errors that mean "busy, retry": lock_timeout, statement_timeout, deadlock, serialization.
BUSY_PGCODES = frozenset({"55P03", "57014", "40P01", "40001"})
IDEMPOTENCY_CONSTRAINTS = frozenset({"uq_ledger_transactions_idempotency_key",
                                     "uq_ledger_entries_idempotency_key"})

_wallets = Wallet.__table__


class InsufficientFunds(Unprocessable):
    error = "insufficient_funds"


class WalletNotFound(NotFound):
    error = "wallet_not_found"


class CurrencyMismatch(Unprocessable):
    error = "currency_mismatch"


class LedgerBusy(ServiceUnavailable):
    """A wallet lock could not be taken within the lock timeout; nothing was written. Retry."""

    error = "resource_busy"


class IdempotencyKeyCollision(Conflict):
    """A counter-entry key exists under another transaction: two different operations share a key."""

    error = "idempotency_key_collision"


@dataclass(frozen=True)
class LedgerLeg:
    entry_id: int
    wallet_id: uuid.UUID
    amount: Decimal                # signed: > 0 credit, < 0 debit
    balance_after: Decimal | None  # None for system wallets (their balance is derived)


@dataclass(frozen=True)
class LedgerResult:
    transaction_id: uuid.UUID
    replayed: bool            # True when the idempotency key already existed: nothing moved this time
    entries: tuple[LedgerLeg, ...]
    kind: str
    currency: str
    amount: Decimal           # the positive amount moved
    reference: str | None
    created_at: dt.datetime

    def leg(self, wallet_id: uuid.UUID) -> LedgerLeg:
        """The entry of `wallet_id` in this transaction (KeyError when it has none)."""
        for leg in self.entries:
            if leg.wallet_id == wallet_id:
                return leg
        raise KeyError(wallet_id)


def entry_key(*, source: str, reference: str, wallet_id: uuid.UUID, action: str) -> str:
    """`{source}:{reference}:{walletId}:{action}`, the idempotency key of one entry."""
    if action not in OPPOSITE:
        raise ValueError(f"action must be {CREDIT!r} or {DEBIT!r}")
    return f"{source}:{reference}:{wallet_id}:{action}"


def credit(*, wallet_id: uuid.UUID, amount: Decimal, idempotency_key: str, kind: str,
           counter_account: str = SystemAccount.PLATFORM_ADJUSTMENTS, reference: str | None = None,
           metadata: dict | None = None, initiated_by: uuid.UUID | None = None,
           commit: bool = True, savepoint: bool = True) -> LedgerResult:
    """Add `amount` to a user wallet, balanced against the system wallet `counter_account`."""
    return _post(_Movement(operation=CREDIT, amount=amount, idempotency_key=idempotency_key, kind=kind,
                           credit_wallet_id=wallet_id, counter_account=counter_account,
                           reference=reference, metadata=metadata, initiated_by=initiated_by),
                 commit=commit, savepoint=savepoint)


def debit(*, wallet_id: uuid.UUID, amount: Decimal, idempotency_key: str, kind: str,
          counter_account: str = SystemAccount.PLATFORM_ADJUSTMENTS, reference: str | None = None,
          metadata: dict | None = None, initiated_by: uuid.UUID | None = None,
          commit: bool = True) -> LedgerResult:
    """Take `amount` from a user wallet into the system wallet `counter_account`; InsufficientFunds if short."""
    return _post(_Movement(operation=DEBIT, amount=amount, idempotency_key=idempotency_key, kind=kind,
                           debit_wallet_id=wallet_id, counter_account=counter_account,
                           reference=reference, metadata=metadata, initiated_by=initiated_by),
                 commit=commit)


def transfer(*, from_wallet_id: uuid.UUID, to_wallet_id: uuid.UUID, amount: Decimal, idempotency_key: str,
             reference: str | None = None, metadata: dict | None = None, initiated_by: uuid.UUID | None = None,
             source_owner_id: uuid.UUID | None = None, commit: bool = True) -> LedgerResult:
    """Move `amount` between two user wallets of one currency; the key is the debit entry's key.

    With `source_owner_id`, a source wallet of anyone else is reported as not found (checked
    under the lock, in the same round trip, so callers need no lookup of their own).
    """
    return _post(_Movement(operation="transfer", amount=amount, idempotency_key=idempotency_key,
                           kind="transfer", debit_wallet_id=from_wallet_id, credit_wallet_id=to_wallet_id,
                           reference=reference, metadata=metadata, initiated_by=initiated_by,
                           source_owner_id=source_owner_id),
                 commit=commit)


def get_transaction(*, transaction_id: uuid.UUID | None = None,
                    idempotency_key: str | None = None) -> LedgerResult | None:
    """A committed transaction with its legs, by id or by idempotency key (replayed=False)."""
    found = _load_transaction(db.session, transaction_id=transaction_id, idempotency_key=idempotency_key)
    return dataclasses.replace(found, replayed=False) if found else None


_DERIVED_BALANCE = text("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE wallet_id = :w")


def derived_balance(*, wallet_id: uuid.UUID) -> Decimal:
    """SUM(entries) of a wallet: the truth for every wallet, and the only balance of a system wallet."""
    total = db.session.execute(_DERIVED_BALANCE, {"w": wallet_id}).scalar_one()
    return Decimal(total)


def system_wallet_id(*, account: str, currency: str) -> uuid.UUID:
    """The id of the system wallet `account` in `currency`, creating missing system wallets."""
    return _system_wallet_id(db.session, account, currency)


# --- internals -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Movement:
    operation: str
    amount: Decimal
    idempotency_key: str
    kind: str
    debit_wallet_id: uuid.UUID | None = None   # a user wallet, or None for the system counter wallet
    credit_wallet_id: uuid.UUID | None = None
    counter_account: str | None = None
    reference: str | None = None
    metadata: dict | None = None
    initiated_by: uuid.UUID | None = None
    source_owner_id: uuid.UUID | None = None

    @property
    def primary(self) -> tuple[uuid.UUID, str]:
        """(wallet id, action) of the entry whose key the caller gave."""
        if self.debit_wallet_id is not None:
            return self.debit_wallet_id, DEBIT
        return self.credit_wallet_id, CREDIT

    @property
    def user_wallet_ids(self) -> list[uuid.UUID]:
        return sorted({w for w in (self.debit_wallet_id, self.credit_wallet_id) if w is not None})


def _post(move: _Movement, *, commit: bool, savepoint: bool = True) -> LedgerResult:
    started = time.perf_counter()
    result: LedgerResult | None = None
    error = None
    try:
        _check_arguments(move)
        session = db.session()  # the Session itself, not the scoped proxy: one registry lookup per call
        with _log_context(move):
            result = _run_owned(session, move) if commit else _run_nested(session, move, savepoint=savepoint)
        if not result.replayed:
            if commit:
                _audit(move, result)
            else:  # written only if the caller's transaction commits
                after_commit(functools.partial(_audit, move, result))
        return result
    except ApiError as exc:
        error = exc.error
        raise
    finally:
        metrics.record_ledger_operation(
            operation=move.operation, success=result is not None,
            amount=move.amount if isinstance(move.amount, Decimal) else None,
            currency=result.currency if result else None,
            duration_s=time.perf_counter() - started, replayed=bool(result and result.replayed), error=error)


def _log_context(move: _Movement):
    """The wallet ids on this operation's log lines (the caller's own context comes back afterwards)."""
    wallet_id, _action = move.primary
    if move.operation == "transfer":
        return bound_contextvars(wallet_id=str(wallet_id), to_wallet_id=str(move.credit_wallet_id))
    return bound_contextvars(wallet_id=str(wallet_id))


def _audit(move: _Movement, result: LedgerResult) -> None:
    audit.money_moved(operation=move.operation, transaction_id=result.transaction_id, kind=result.kind,
                      amount=result.amount, currency=result.currency, from_wallet_id=move.debit_wallet_id,
                      to_wallet_id=move.credit_wallet_id, counter_account=move.counter_account,
                      actor=move.initiated_by, reference=result.reference)


def _check_arguments(move: _Movement) -> None:
    """Everything that needs no database: amount range, key shape, distinct wallets."""
    if not isinstance(move.amount, Decimal):
        raise field_error("amount", "Amount must be a Decimal.")
    try:
        amounts.check_range(move.amount)
    except ValueError as exc:
        raise field_error("amount", str(exc)) from None
    if not move.kind or len(move.kind) > MAX_KIND_LENGTH:
        raise ValueError(f"kind must be 1..{MAX_KIND_LENGTH} characters")
    needed = {CREDIT: (move.credit_wallet_id,), DEBIT: (move.debit_wallet_id,)}.get(
        move.operation, (move.debit_wallet_id, move.credit_wallet_id))
    if any(not isinstance(wallet_id, uuid.UUID) for wallet_id in needed):
        raise ValueError("wallet ids must be UUIDs")
    if move.operation in (CREDIT, DEBIT) and move.counter_account not in SystemAccount.ALL:
        raise ValueError(f"counter_account must be one of {SystemAccount.ALL}")
    if move.debit_wallet_id is not None and move.debit_wallet_id == move.credit_wallet_id:
        raise field_error("to_wallet_id", "Cannot transfer to the same wallet.", error="same_wallet")
    wallet_id, action = move.primary
    suffix = f":{wallet_id}:{action}"
    key = move.idempotency_key
    if not isinstance(key, str) or len(key) <= len(suffix) or not key.endswith(suffix):
        raise ValueError(f"idempotency_key must look like '{{source}}:{{reference}}{suffix}' "
                         f"(see ledger.entry_key), got {key!r}")
    if len(key) + 1 > MAX_KEY_LENGTH:  # +1: the counter key may end in 'credit' where this one has 'debit'
        raise ValueError(f"idempotency_key must be at most {MAX_KEY_LENGTH - 1} characters")


def _counter_key(key: str, move: _Movement, counter_wallet_id: uuid.UUID) -> str:
    wallet_id, action = move.primary
    prefix = key[: -len(f":{wallet_id}:{action}")]
    return f"{prefix}:{counter_wallet_id}:{OPPOSITE[action]}"


# The write path is three round trips after psycopg2's BEGIN: 1. lock timeout, row locks, then the
# locked rows and the idempotency lookup; 2. every insert and balance update; 3. COMMIT. Inside a
# caller's transaction the caller's lock timeout is saved in the first and put back in the second,
# so the ledger's own setting costs no round trip of its own there either. The statements are
# prepared once per connection and then only executed (wallet_api/prepared_statements.py): parsing
# and planning them on every call cost PostgreSQL more than running them. They are run with
# exec_driver_sql (psycopg2's %(name)s parameters): no compilation per call, and SQLAlchemy still
# wraps errors (OperationalError, IntegrityError) and handles disconnects.
#
# psycopg2 sends a multi-statement string as one simple-protocol query and returns the last
# statement's rows. Under READ COMMITTED each statement takes its own snapshot, so the final SELECT,
# which runs once the FOR UPDATE has the locks, sees everything committed while we waited: the
# latest balances and an idempotency key committed by a concurrent duplicate.
_SAVE_LOCK_TIMEOUT = PreparedStatement(
    "ledger_save_lock_timeout",
    "SELECT set_config('wallet_api.caller_lock_timeout', current_setting('lock_timeout'), true)")
# Left to choose, PostgreSQL re-plans the lock and the look-up on every EXECUTE: for `id = ANY($1)`
# it guesses ten rows in a generic plan and two in a custom one, so the custom plan always looks
# cheaper. Their generic plans are the same index scans; forcing them (for this transaction, and
# only prepared statements heed it) is what saves the planning.
_SET_LOCK_TIMEOUT = PreparedStatement(
    "ledger_set_lock_timeout", "SELECT set_config('lock_timeout', %(lock_timeout)s, true), "
                               "set_config('plan_cache_mode', 'force_generic_plan', true)",
    (("lock_timeout", "text"),))
_LOCK = PreparedStatement("ledger_lock", """
    SELECT 1 FROM wallets WHERE id = ANY(%(ids)s) AND user_id IS NOT NULL
    ORDER BY id FOR UPDATE""", (("ids", "uuid[]"),))
_LOOK_UP = PreparedStatement("ledger_look_up", """
    SELECT w.id, w.user_id, w.currency, w.balance,
           (SELECT t.id FROM ledger_transactions t WHERE t.idempotency_key = %(key)s) AS existing,
           (SELECT s.id FROM wallets s
            WHERE s.system_account = %(account)s AND s.currency = w.currency) AS system_id
    FROM wallets w WHERE w.id = ANY(%(ids)s) AND w.user_id IS NOT NULL""",
    (("ids", "uuid[]"), ("key", "text"), ("account", "text")))
_LOCK_AND_LOOK_UP = (_SAVE_LOCK_TIMEOUT, _SET_LOCK_TIMEOUT, _LOCK, _LOOK_UP)

# The transaction row, its legs (in order: ids follow it) and the new cached balances of the user
# wallets, in one statement. Data-modifying CTEs all run; the foreign keys are checked at its end.
_WRITE = PreparedStatement("ledger_write", """
    WITH tx AS (
        INSERT INTO ledger_transactions (id, kind, currency, amount, reference, idempotency_key,
                                         initiated_by, metadata)
        VALUES (%(id)s, %(kind)s, %(currency)s, %(amount)s, %(reference)s, %(key)s, %(initiated_by)s,
                %(metadata)s)
        RETURNING created_at
    ), legs AS (
        INSERT INTO ledger_entries (transaction_id, wallet_id, currency, amount, balance_after, idempotency_key)
        SELECT %(id)s, leg.wallet_id, %(currency)s, leg.amount, leg.balance_after, leg.key
        FROM unnest(%(leg_wallets)s, %(leg_amounts)s, %(leg_balances)s, %(leg_keys)s)
             WITH ORDINALITY AS leg(wallet_id, amount, balance_after, key, n)
        ORDER BY leg.n
        RETURNING id, idempotency_key
    ), balances AS (
        UPDATE wallets SET balance = new.balance, updated_at = now()
        FROM unnest(%(user_wallets)s, %(user_balances)s) AS new(id, balance)
        WHERE wallets.id = new.id
    )
    SELECT (SELECT created_at FROM tx) AS created_at, legs.id, legs.idempotency_key FROM legs""",
    (("id", "uuid"), ("kind", "text"), ("currency", "text"), ("amount", "numeric"), ("reference", "text"),
     ("key", "text"), ("initiated_by", "uuid"), ("metadata", "jsonb"), ("leg_wallets", "uuid[]"),
     ("leg_amounts", "numeric[]"), ("leg_balances", "numeric[]"), ("leg_keys", "text[]"),
     ("user_wallets", "uuid[]"), ("user_balances", "numeric[]")))

# A SET LOCAL made inside a savepoint that is released lasts for the caller's whole transaction.
# The rows are locked by then, and the write cannot wait on a lock of its own (a duplicate of the
# same key needs the same wallet locks first), so the caller's timeout is back before it runs.
_RESTORE_LOCK_TIMEOUT = PreparedStatement(
    "ledger_restore_lock_timeout",
    "SELECT set_config('lock_timeout', current_setting('wallet_api.caller_lock_timeout'), true)")
_WRITE_NESTED = (_RESTORE_LOCK_TIMEOUT, _WRITE)


def _run_owned(session: Session, move: _Movement) -> LedgerResult:
    """commit=True: this function's transaction, committed here, rolled back on any failure."""
    try:
        result = _apply_reconnecting(session, move)
        session.commit()
        return result
    except IntegrityError as exc:
        session.rollback()
        result = _replay_after_conflict(session, move, exc)
        session.commit()
        return result
    except OperationalError as exc:
        session.rollback()
        raise _busy_or(exc)
    except BaseException:
        session.rollback()
        raise


def _apply_reconnecting(session: Session, move: _Movement) -> LedgerResult:
    """`_apply`, started once more on a new connection when the connection died before COMMIT.

    A transaction whose connection is lost before COMMIT wrote nothing, so starting it again is
    safe; when the session already had a transaction of the caller's, that work is gone too and
    the error is raised instead (see wallet_api/database.py).
    """
    fresh = not session.in_transaction()
    try:
        return _apply(session, move)
    except DBAPIError as exc:
        if not (fresh and lost_before_commit(exc)):
            raise
    session.rollback()
    log.warning("ledger_retried_after_disconnect", operation=move.operation)
    return _apply(session, move)


def _run_nested(session: Session, move: _Movement, *, savepoint: bool = True) -> LedgerResult:
    """commit=False: the caller's transaction; our writes sit in a SAVEPOINT and are only flushed.

    Without the savepoint every error is raised as it is (busy ones as LedgerBusy), for the caller
    to roll back.
    """
    if not savepoint:
        try:
            return _apply(session, move, nested=True)
        except OperationalError as exc:
            raise _busy_or(exc)
    savepoint = session.begin_nested()
    try:
        result = _apply(session, move, nested=True)
    except IntegrityError as exc:
        savepoint.rollback()  # also undoes the SET LOCAL
        return _replay_after_conflict(session, move, exc)
    except OperationalError as exc:
        savepoint.rollback()
        raise _busy_or(exc)
    except BaseException:
        savepoint.rollback()
        raise
    savepoint.commit()
    return result


def _busy_or(exc: OperationalError) -> Exception:
    pgcode = getattr(exc.orig, "pgcode", None)
    if pgcode in BUSY_PGCODES:
        log.warning("ledger_busy", pgcode=pgcode)
        busy = LedgerBusy("The wallet is busy; retry shortly.", headers={"Retry-After": "1"})
        busy.__cause__ = exc
        return busy
    return exc


def _apply(session: Session, move: _Movement, *, nested: bool = False) -> LedgerResult:
    """Lock, look the key up, check, write. Raises without writing anything on any refusal.

    nested: inside the caller's transaction (a savepoint), whose lock timeout is put back before
    returning.
    """
    timeout_ms = int(current_app.config["SETTINGS"].ledger_lock_timeout_ms)
    connection = session.connection()
    rows = connection.exec_driver_sql(sql_for(connection, *_LOCK_AND_LOOK_UP), {
        "lock_timeout": f"{timeout_ms}ms", "ids": move.user_wallet_ids, "key": move.idempotency_key,
        "account": move.counter_account or ""}).all()
    wallets = {row.id: row for row in rows}
    if move.source_owner_id is not None and move.debit_wallet_id in wallets \
            and wallets[move.debit_wallet_id].user_id != move.source_owner_id:
        del wallets[move.debit_wallet_id]  # another user's wallet: as if it did not exist
    for wallet_id, what in ((move.debit_wallet_id, "source"), (move.credit_wallet_id, "destination")):
        if wallet_id is not None and wallet_id not in wallets:
            label = "Wallet" if move.operation != "transfer" else f"{what.capitalize()} wallet"
            raise WalletNotFound(f"{label} {wallet_id} was not found.")

    currencies = {w.currency for w in wallets.values()}
    if len(currencies) != 1:
        raise CurrencyMismatch("Both wallets of a transfer must hold the same currency "
                               f"(source {wallets[move.debit_wallet_id].currency}, "
                               f"destination {wallets[move.credit_wallet_id].currency}).")
    (currency,) = currencies
    row = rows[0]
    if row.existing is not None:
        if nested:
            connection.exec_driver_sql(sql_for(connection, _RESTORE_LOCK_TIMEOUT))
        return _replayed(session, move, transaction_id=row.existing)

    amounts.check_amount(move.amount, currency)
    counter_id = None
    if move.counter_account is not None:
        counter_id = row.system_id or _system_wallet_id(session, move.counter_account, currency)

    legs = []  # (wallet id, signed amount, balance_after or None, idempotency key), debit first
    for wallet_id, signed in ((move.debit_wallet_id or counter_id, move.amount.copy_negate()),
                              (move.credit_wallet_id or counter_id, move.amount)):
        wallet = wallets.get(wallet_id)
        balance_after = None
        if wallet is not None:
            balance_after = amounts.add(wallet.balance, signed)
            if balance_after < 0:
                raise InsufficientFunds(
                    f"Insufficient funds: the balance is {amounts.format_money(wallet.balance, currency)} "
                    f"{currency}.")
        key = move.idempotency_key if wallet_id == move.primary[0] else _counter_key(
            move.idempotency_key, move, wallet_id)
        legs.append((wallet_id, signed, balance_after, key))

    transaction_id = uuid.uuid4()
    user_legs = [(wallet_id, after) for wallet_id, _, after, _ in legs if after is not None]
    written = connection.exec_driver_sql(sql_for(connection, *(_WRITE_NESTED if nested else (_WRITE,))), {
        "id": transaction_id, "kind": move.kind, "currency": currency, "amount": move.amount,
        "reference": move.reference, "key": move.idempotency_key, "initiated_by": move.initiated_by,
        "metadata": metadata_json(move.metadata or {}),
        "leg_wallets": [leg[0] for leg in legs], "leg_amounts": [leg[1] for leg in legs],
        "leg_balances": [leg[2] for leg in legs], "leg_keys": [leg[3] for leg in legs],
        "user_wallets": [w for w, _ in user_legs], "user_balances": [b for _, b in user_legs],
    }).all()
    ids = {row.idempotency_key: row.id for row in written}
    _expire_cached_wallets(session, wallets)
    return LedgerResult(
        transaction_id=transaction_id, replayed=False,
        entries=tuple(LedgerLeg(entry_id=ids[key], wallet_id=wallet_id, amount=signed, balance_after=after)
                      for wallet_id, signed, after, key in legs),
        kind=move.kind, currency=currency, amount=move.amount, reference=move.reference,
        created_at=written[0].created_at)


def _replayed(session: Session, move: _Movement, *, transaction_id: uuid.UUID) -> LedgerResult:
    found = _load_transaction(session, transaction_id=transaction_id)
    wallet_id, _action = move.primary
    if (found.amount != move.amount or found.kind != move.kind
            or all(leg.wallet_id != wallet_id for leg in found.entries)):
        # Same key, different operation: a caller bug. The first one stands; say so loudly.
        log.error("ledger_idempotency_key_reused_with_different_operation", key=move.idempotency_key,
                  transaction_id=str(transaction_id), amount=str(move.amount), kind=move.kind)
    return found


def _replay_after_conflict(session: Session, move: _Movement, exc: IntegrityError) -> LedgerResult:
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    if constraint not in IDEMPOTENCY_CONSTRAINTS:
        raise exc
    found = _load_transaction(session, idempotency_key=move.idempotency_key)
    if found is None:
        raise IdempotencyKeyCollision(
            "A ledger entry with this operation's counter key already belongs to another transaction.") from exc
    log.info("ledger_idempotent_replay_after_conflict", key=move.idempotency_key)
    return found


_TRANSACTION_BY = {
    column: text(f"""
        SELECT t.id, t.kind, t.currency, t.amount, t.reference, t.created_at,
               e.id AS entry_id, e.wallet_id, e.amount AS entry_amount, e.balance_after
        FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id
        WHERE t.{column} = :v ORDER BY e.id""")
    for column in ("id", "idempotency_key")}


def _load_transaction(session: Session, *, transaction_id: uuid.UUID | None = None,
                      idempotency_key: str | None = None) -> LedgerResult | None:
    by_id = transaction_id is not None
    rows = session.execute(_TRANSACTION_BY["id" if by_id else "idempotency_key"],
                           {"v": transaction_id if by_id else idempotency_key}).all()
    if not rows:
        return None
    first = rows[0]
    return LedgerResult(
        transaction_id=first.id, replayed=True,
        entries=tuple(LedgerLeg(entry_id=r.entry_id, wallet_id=r.wallet_id, amount=r.entry_amount,
                                balance_after=r.balance_after) for r in rows),
        kind=first.kind, currency=first.currency, amount=first.amount, reference=first.reference,
        created_at=first.created_at)


_SYSTEM_WALLET = select(_wallets.c.id).where(_wallets.c.system_account == bindparam("account"),
                                             _wallets.c.currency == bindparam("currency"))


def _system_wallet_id(session: Session, account: str, currency: str) -> uuid.UUID:
    if account not in SystemAccount.ALL:
        raise ValueError(f"unknown system account {account!r}")
    params = {"account": account, "currency": currency}
    found = session.execute(_SYSTEM_WALLET, params).scalar_one_or_none()
    if found is None:
        ensure_system_wallets(session)
        found = session.execute(_SYSTEM_WALLET, params).scalar_one()
    return found


def _expire_cached_wallets(session: Session, wallets: dict) -> None:
    """Wallet objects the caller loaded into this session now hold a stale balance."""
    if not session.identity_map:  # the usual case: nothing loaded, no identity keys to build
        return
    for wallet_id in wallets:
        cached = session.identity_map.get(session.identity_key(Wallet, wallet_id))
        if cached is not None:
            session.expire(cached)




# --- cached balance corrections ----------------------------------------------------------------


class CorrectionRefused(Conflict):
    """The cached balance cannot be set to the ledger sum (e.g. the sum is negative); nothing changed."""

    error = "correction_refused"


@dataclass(frozen=True)
class BalanceRewrite:
    wallet_id: uuid.UUID
    currency: str
    before: Decimal
    after: Decimal
    correction_id: uuid.UUID | None  # None when the cache already matched (only the flag was cleared)


def rewrite_cached_balance(*, wallet_id: uuid.UUID, corrected_by: str, reason: str,
                           job_run_id: uuid.UUID | None = None) -> BalanceRewrite:
    """Set a user wallet's cached balance to the sum of its entries, under the wallet's lock, clear its
    reconciliation flag, and record the correction. Entries are never touched.

    The caller checks first that the wallet's transactions balance; this only rewrites the cache.
    """
    session = db.session()
    timeout_ms = int(current_app.config["SETTINGS"].ledger_lock_timeout_ms)
    try:
        session.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{timeout_ms}ms"})
        wallet = session.execute(text(
            "SELECT id, currency, balance FROM wallets WHERE id = :w AND user_id IS NOT NULL FOR UPDATE"),
            {"w": wallet_id}).one_or_none()
        if wallet is None:
            raise WalletNotFound(f"Wallet {wallet_id} was not found.")
        total, last_entry_id = session.execute(text(
            "SELECT coalesce(sum(amount), 0), max(id) FROM ledger_entries WHERE wallet_id = :w"),
            {"w": wallet_id}).one()
        correction_id = None
        if wallet.balance != total:
            if total < 0:
                raise CorrectionRefused(f"The entries of wallet {wallet_id} sum to {total}, below zero; "
                                        "a user wallet's balance cannot be negative.")
            correction_id = uuid.uuid4()
            session.execute(text("""
                INSERT INTO balance_corrections (id, wallet_id, currency, balance_before, balance_after,
                                                 last_entry_id, corrected_by, reason, job_run_id)
                VALUES (:id, :w, :currency, :before, :after, :last_entry_id, :by, :reason, :run)"""),
                {"id": correction_id, "w": wallet_id, "currency": wallet.currency, "before": wallet.balance,
                 "after": total, "last_entry_id": last_entry_id, "by": corrected_by, "reason": reason,
                 "run": job_run_id})
        session.execute(text("UPDATE wallets SET balance = :b, needs_reconciliation = false, updated_at = now() "
                             "WHERE id = :w"), {"b": total, "w": wallet_id})
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise _busy_or(exc)
    except BaseException:
        session.rollback()
        raise
    _expire_cached_wallets(session, {wallet_id: None})
    audit.admin_action(admin_id=None, action="rewrite_cached_balance", target=str(wallet_id),
                       outcome="corrected" if correction_id else "unchanged", corrected_by=corrected_by,
                       before=str(wallet.balance), after=str(total),
                       correction_id=str(correction_id) if correction_id else None)
    log.warning("cached_balance_rewritten", wallet_id=str(wallet_id), before=str(wallet.balance), after=str(total),
                corrected_by=corrected_by, correction_id=str(correction_id) if correction_id else None)
    return BalanceRewrite(wallet_id=wallet_id, currency=wallet.currency, before=wallet.balance, after=total,
                          correction_id=correction_id)
