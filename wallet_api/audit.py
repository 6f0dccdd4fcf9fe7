"""The AUDIT channel: one log line per money movement and per admin action.

Lines go to the logger `wallet_api.audit` with `channel="audit"`, through the same handler as every
other line (stderr, JSON in production, sanitised), and at INFO whatever LOG_LEVEL says. An
operator routes them by that field (docs/LOGGING.md). They carry ids, amounts as decimal strings
and who acted, never a secret. The database stays the record (ledger rows, the admin access log);
these lines are what a log pipeline can alert on and keep apart.

    money_moved     written once the movement is committed (a replay by idempotency key moved
                    nothing and writes nothing)
    admin_action    one per request to the admin area (API and console), allowed or refused, and
                    per cached-balance correction
"""
from __future__ import annotations

import uuid
from decimal import Decimal

import structlog

from wallet_api.logging import AUDIT_LOGGER

CHANNEL = "audit"
_log = structlog.get_logger(AUDIT_LOGGER)


def money_moved(*, operation: str, transaction_id: uuid.UUID, kind: str, amount: Decimal, currency: str,
                from_wallet_id: uuid.UUID | None, to_wallet_id: uuid.UUID | None, counter_account: str | None,
                actor: uuid.UUID | None, reference: str | None) -> None:
    """A committed credit, debit or transfer. `actor` None: the platform itself (a webhook credit)."""
    _log.info("money_moved", channel=CHANNEL, operation=operation, transaction_id=str(transaction_id),
              kind=kind, amount=str(amount), currency=currency,
              from_wallet_id=str(from_wallet_id) if from_wallet_id else None,
              to_wallet_id=str(to_wallet_id) if to_wallet_id else None,
              counter_account=counter_account, actor=str(actor) if actor else "system", reference=reference)


def admin_action(*, admin_id: uuid.UUID | str | None, action: str, target: str | None, outcome: str,
                 **details) -> None:
    """An operator's action (or attempt): who, what, on what, and how it ended."""
    _log.info("admin_action", channel=CHANNEL, admin_id=str(admin_id) if admin_id else None, action=action,
              target=target, outcome=outcome, **details)


def outcome_of(status_code: int) -> str:
    """`succeeded`, `refused` (401, 403, 429) or `failed`, for an HTTP status."""
    if status_code < 400:
        return "succeeded"
    return "refused" if status_code in (401, 403, 429) else "failed"
