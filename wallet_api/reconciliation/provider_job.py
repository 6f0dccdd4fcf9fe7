"""Runs in a worker (the periodic provider-reconciliation job): MoonPay's record against ours.

Webhooks can be lost, delayed past every retry, or (by a bug) applied wrongly; MoonPay's REST API
is the other witness. Each run asks MoonPay for the buy transactions created since the previous
successful run's window ended, minus PROVIDER_RECONCILIATION_OVERLAP_MINUTES (the first run looks
back PROVIDER_RECONCILIATION_LOOKBACK_HOURS), and compares them with our on-ramp credits
(ledger transactions of kind `onramp_credit`, reference `moonpay:<MoonPay id>`):

- completed at MoonPay but never credited here: a lost webhook, whether or not we even have the
  on-ramp row (`completed_not_credited`);
- credited here but not completed at MoonPay, or unknown to it (`credited_not_completed`,
  `credited_unknown_at_provider`); credits of the window that MoonPay's list lacks are looked up
  one by one, since the list filters on MoonPay's creation date;
- the credited amount or currency is not MoonPay's quoteCurrencyAmount in currency.code
  (`amount_mismatch`, `currency_mismatch`);
- more than one credit for one MoonPay transaction (`duplicate_credit`).

Each finding is one PROVIDER_MISMATCH alert (high) per MoonPay transaction; nothing is corrected.

A purchase MoonPay completed moments ago, or whose webhook we hold and are still working on
(pending, or waiting for a retry), is not a lost webhook yet: the pipeline promises to finish it
(or dead-letter it, with its own alert) within WEBHOOK_STALE_AFTER_SECONDS plus one
WEBHOOK_RETRY_INTERVAL_SECONDS. Such a `completed_not_credited` is deferred: the run records its id
(`deferred` in the run's counts) and the next run looks it up by id, whatever its window, and
alerts if it is still not credited then.
MoonPay unreachable or answering garbage fails the run (JOB_CRASH, through the job runner), so
the next run covers the same window again.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import structlog
from flask import current_app
from sqlalchemy import text

from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import AlertSpec, raise_alerts
from wallet_api.db_types import utcnow
from wallet_api.extensions import db
from wallet_api.jobs.runner import last_success
from wallet_api.onramp import moonpay
from wallet_api.onramp.moonpay import MoonPayTransaction
from wallet_api.onramp.moonpay_client import MoonPayApi, moonpay_api

log = structlog.get_logger(__name__)

JOB_NAME = "provider-reconciliation"
CREDIT_KIND = "onramp_credit"
REFERENCE_PREFIX = "moonpay:"


@dataclass(frozen=True)
class LocalCredit:
    transaction_id: uuid.UUID
    moonpay_id: str
    wallet_id: uuid.UUID
    amount: Decimal
    currency: str
    onramp_id: uuid.UUID | None


_CREDITS_FOR = text("""
    SELECT t.id AS transaction_id, substr(t.reference, :prefix_length + 1) AS moonpay_id, t.amount, t.currency,
           e.wallet_id, o.id AS onramp_id
    FROM ledger_transactions t
    JOIN ledger_entries e ON e.transaction_id = t.id AND e.amount > 0
    LEFT JOIN onramp_transactions o ON o.ledger_transaction_id = t.id
    WHERE t.kind = :kind AND t.reference = ANY(CAST(:references AS text[]))""")

_CREDITS_CREATED_BETWEEN = text("""
    SELECT t.id AS transaction_id, substr(t.reference, :prefix_length + 1) AS moonpay_id, t.amount, t.currency,
           e.wallet_id, o.id AS onramp_id
    FROM ledger_transactions t
    JOIN ledger_entries e ON e.transaction_id = t.id AND e.amount > 0
    LEFT JOIN onramp_transactions o ON o.ledger_transaction_id = t.id
    WHERE t.kind = :kind AND t.created_at >= :start AND t.created_at < :end""")

_EVENTS_IN_FLIGHT = text("""
    SELECT DISTINCT external_id FROM webhook_events
    WHERE provider = 'moonpay' AND external_id = ANY(CAST(:moonpay_ids AS text[]))
      AND status IN ('pending', 'retry_scheduled')""")

_ONRAMPS_FOR = text("""
    SELECT id, moonpay_transaction_id, status FROM onramp_transactions
    WHERE id = ANY(CAST(:ids AS uuid[])) OR moonpay_transaction_id = ANY(CAST(:moonpay_ids AS text[]))""")


def run_provider_reconciliation(*, api: MoonPayApi | None = None, now: dt.datetime | None = None) -> dict:
    """Compare MoonPay's transactions of the window with our credits; returns the run's counts."""
    settings = current_app.config["SETTINGS"]
    end = now or utcnow()
    previous = last_success(JOB_NAME)
    start = _window_start(end, previous)
    client = api or moonpay_api(settings)
    provider = {tx.id: tx for tx in client.list_transactions(start=start, end=end)}
    still_deferred = list((previous.counts or {}).get("deferred") or []) if previous else []

    credits = _credits_by_moonpay_id(list(provider) + still_deferred)
    local_in_window = _credits_created_between(start, end)
    for moonpay_id, found in local_in_window.items():
        credits.setdefault(moonpay_id, found)
    # Our credits MoonPay's list lacks (it filters on its own creation date), and what the previous
    # run deferred: ask for each one.
    for moonpay_id in sorted((set(credits) | set(still_deferred)) - set(provider)):
        looked_up = client.get_transaction(moonpay_id)
        if looked_up is not None:
            provider[moonpay_id] = looked_up

    onramps = _onramps_for(provider.values())
    in_flight = _events_in_flight(list(provider))
    settled_before = end - dt.timedelta(seconds=settings.webhook_stale_after_seconds
                                        + settings.webhook_retry_interval_seconds)
    specs, deferred = [], []
    for moonpay_id in sorted(set(provider) | set(credits)):
        tx = provider.get(moonpay_id)
        finding = _compare(tx, credits.get(moonpay_id, []))
        if finding is None:
            continue
        kind, detail = finding
        if kind == "completed_not_credited" and (moonpay_id in in_flight or _changed_after(tx, settled_before)):
            deferred.append(moonpay_id)
            continue
        specs.append(_alert(kind=kind, detail=detail, moonpay_id=moonpay_id, tx=tx,
                            credits=credits.get(moonpay_id, []), onramp=onramps.get(moonpay_id)))
    raised = raise_alerts(specs)
    db.session.commit()
    counts = {"window_start": start, "window_end": end, "provider_transactions": len(provider),
              "local_credits": sum(len(found) for found in credits.values()), "mismatches": len(specs),
              "alerts_new": len(raised.new), "alerts_repeated": len(raised.repeated), "deferred": deferred}
    if specs:
        log.error("provider_reconciliation_mismatches", **counts)
    return counts


def _window_start(end: dt.datetime, previous) -> dt.datetime:
    settings = current_app.config["SETTINGS"]
    previous_end = (previous.counts or {}).get("window_end") if previous else None
    if previous_end:
        return dt.datetime.fromisoformat(previous_end) - dt.timedelta(
            minutes=settings.provider_reconciliation_overlap_minutes)
    return end - dt.timedelta(hours=settings.provider_reconciliation_lookback_hours)


def _compare(tx: MoonPayTransaction | None, credits: list[LocalCredit]) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong between MoonPay's record and our credits, or None."""
    if tx is None:
        return "credited_unknown_at_provider", "we credited a MoonPay transaction that MoonPay does not know"
    completed = tx.status == moonpay.COMPLETED
    if len(credits) > 1:
        return "duplicate_credit", f"{len(credits)} credits for one MoonPay transaction"
    if not credits:
        return ("completed_not_credited", "completed at MoonPay, never credited here") if completed else None
    if not completed:
        return "credited_not_completed", f"credited here, but MoonPay says {tx.status!r}"
    (credit,) = credits
    expected_currency = moonpay.currency_for_code(tx.currency_code) if tx.currency_code else None
    if expected_currency != credit.currency:
        return "currency_mismatch", (f"credited in {credit.currency}, MoonPay's currency is "
                                     f"{tx.currency_code!r}")
    if tx.quote_currency_amount is None or tx.quote_currency_amount != credit.amount:
        return "amount_mismatch", (f"credited {credit.amount.normalize():f}, MoonPay's quoteCurrencyAmount "
                                   f"is {tx.quote_currency_amount}")
    return None


def _alert(*, kind: str, detail: str, moonpay_id: str, tx: MoonPayTransaction | None, credits: list[LocalCredit],
           onramp: dict | None) -> AlertSpec:
    return AlertSpec(
        alert_type=AlertType.PROVIDER_MISMATCH, subject=f"moonpay:{moonpay_id}",
        title=f"MoonPay transaction {moonpay_id}: {kind.replace('_', ' ')}",
        message=f"MoonPay transaction {moonpay_id}: {detail}.",
        metadata={
            "kind": kind, "moonpay_transaction_id": moonpay_id,
            "moonpay_status": tx.status if tx else None,
            "moonpay_amount": tx.quote_currency_amount if tx else None,
            "moonpay_currency": tx.currency_code if tx else None,
            "external_transaction_id": tx.external_transaction_id if tx else None,
            "onramp_transaction_id": (onramp or {}).get("id") or next(
                (c.onramp_id for c in credits if c.onramp_id), None),
            "onramp_status": (onramp or {}).get("status"),
            "ledger_transaction_ids": [c.transaction_id for c in credits],
            "credited_amounts": [c.amount for c in credits],
            "credited_wallet_ids": [c.wallet_id for c in credits],
        })


def _credits_by_moonpay_id(moonpay_ids: list[str]) -> dict[str, list[LocalCredit]]:
    if not moonpay_ids:
        return {}
    rows = db.session.execute(_CREDITS_FOR, {"kind": CREDIT_KIND, "prefix_length": len(REFERENCE_PREFIX),
                                             "references": [REFERENCE_PREFIX + i for i in moonpay_ids]})
    return _group(rows)


def _credits_created_between(start: dt.datetime, end: dt.datetime) -> dict[str, list[LocalCredit]]:
    rows = db.session.execute(_CREDITS_CREATED_BETWEEN, {"kind": CREDIT_KIND, "start": start, "end": end,
                                                         "prefix_length": len(REFERENCE_PREFIX)})
    return _group(rows)


def _group(rows) -> dict[str, list[LocalCredit]]:
    grouped: dict[str, list[LocalCredit]] = defaultdict(list)
    for row in rows.mappings():
        grouped[row["moonpay_id"]].append(LocalCredit(**row))
    return dict(grouped)


def _events_in_flight(moonpay_ids: list[str]) -> set[str]:
    """MoonPay ids with a stored webhook event we have not finished (pending or waiting to retry)."""
    if not moonpay_ids:
        return set()
    return set(db.session.scalars(_EVENTS_IN_FLIGHT, {"moonpay_ids": moonpay_ids}))


def _changed_after(tx: MoonPayTransaction, moment: dt.datetime) -> bool:
    """True when MoonPay last changed `tx` after `moment` (its updatedAt; createdAt without one)."""
    stamp = tx.updated_at or tx.created_at
    if not stamp:
        return False
    try:
        changed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return False  # unreadable: judge it now rather than defer it forever
    if changed.tzinfo is None:
        changed = changed.replace(tzinfo=dt.timezone.utc)
    return changed > moment


def _onramps_for(transactions) -> dict[str, dict]:
    """Our on-ramp rows for MoonPay's transactions, by MoonPay id (matched on its id or on our external id)."""
    by_external: dict[uuid.UUID, str] = {}
    for tx in transactions:
        try:
            by_external[uuid.UUID(tx.external_transaction_id)] = tx.id
        except (TypeError, ValueError):
            pass
    moonpay_ids = [tx.id for tx in transactions]
    if not moonpay_ids:
        return {}
    found = {}
    for row in db.session.execute(_ONRAMPS_FOR, {"ids": list(by_external), "moonpay_ids": moonpay_ids}).mappings():
        key = row["moonpay_transaction_id"] or by_external.get(row["id"])
        if key is not None:
            found[key] = dict(row)
    return found
