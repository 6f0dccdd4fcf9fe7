"""Provider reconciliation against a stub MoonPay (a real HTTP server on loopback): every kind of
difference between MoonPay's record and our credits is one PROVIDER_MISMATCH alert, nothing is
corrected, and a MoonPay that cannot be read fails the run loudly."""
import datetime as dt
import json
import re
import uuid
from decimal import Decimal

import pytest
from werkzeug import Request, Response

from tests.onramp.support import moonpay_event, post_webhook
from wallet_api.extensions import db
from wallet_api.wallets import ledger
from wallet_api.wallets.models import SystemAccount
from wallet_api.reconciliation.provider_job import run_provider_reconciliation

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


class StubMoonPay:
    """MoonPay's GET /v1/transactions (date window, offset pages) and GET /v1/transactions/<id>."""

    def __init__(self, httpserver):
        self.transactions: dict[str, dict] = {}
        self.list_requests: list[dict] = []
        self.broken = None
        httpserver.expect_request(re.compile(r"^/v1/transactions.*")).respond_with_handler(self.handle)

    def add(self, moonpay_id, *, status="completed", amount="0.05", currency="eth", onramp_id=None, user_id=None,
            created=NOW - dt.timedelta(minutes=30), updated=None) -> str:
        self.transactions[moonpay_id] = {
            "id": moonpay_id, "status": status, "quoteCurrencyAmount": amount, "baseCurrencyAmount": "100",
            "currency": {"code": currency}, "baseCurrency": {"code": "usd"},
            "externalTransactionId": str(onramp_id) if onramp_id else None,
            "externalCustomerId": str(user_id) if user_id else None,
            "createdAt": created.isoformat().replace("+00:00", "Z"), "updatedAt": (updated or created).isoformat()}
        return moonpay_id

    def handle(self, request: Request) -> Response:
        if self.broken:
            return Response(self.broken[1], status=self.broken[0], content_type="application/json")
        if request.path == "/v1/transactions":
            self.list_requests.append(dict(request.args))
            offset, limit = int(request.args["offset"]), int(request.args["limit"])
            page = list(self.transactions.values())[offset:offset + limit]
            return Response(_json(page), content_type="application/json")
        found = self.transactions.get(request.path.rsplit("/", 1)[-1])
        return Response(_json(found), content_type="application/json") if found else Response("{}", status=404)


def _json(value) -> str:
    # Amounts as JSON numbers, like MoonPay sends them.
    return re.sub(r'"(quoteCurrencyAmount|baseCurrencyAmount)": "([0-9.]+)"', r'"\1": \2', json.dumps(value))


@pytest.fixture
def moonpay(httpserver):
    return StubMoonPay(httpserver)


@pytest.fixture
def provider_app(make_settings_app, httpserver):
    return make_settings_app(moonpay_api_base_url=httpserver.url_for("").rstrip("/"))


@pytest.fixture
def reconcile(provider_app):
    def run(now=None):
        with provider_app.app_context():
            try:
                return run_provider_reconciliation(now=now)
            finally:
                db.session.remove()

    return run


@pytest.fixture
def credited(app, client, run_jobs, user, onramp):
    """credited(moonpay_id, amount="0.05") -> onramp id: a purchase credited through the real webhook path."""

    def make(moonpay_id, amount="0.05", currency="ETH"):
        onramp_id, _ = onramp(user, currency)
        post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, moonpay_id=moonpay_id,
                                           amount=amount, currency=currency.lower()))
        run_jobs()
        return onramp_id

    return make


def mismatches(books) -> dict[str, dict]:
    return {a["subject"]: a for a in books.read("SELECT * FROM alert_log WHERE alert_type = 'PROVIDER_MISMATCH'")}


def test_matching_records_raise_nothing(reconcile, moonpay, credited, books, user):
    onramp_id = credited("mp_ok", "0.05")
    moonpay.add("mp_ok", amount="0.050", onramp_id=onramp_id, user_id=user.id)
    moonpay.add("mp_pending", status="pending")  # not completed, not credited: nothing to say
    counts = reconcile()
    assert counts["provider_transactions"] == 2 and counts["local_credits"] == 1 and counts["mismatches"] == 0
    assert mismatches(books) == {}


def test_a_purchase_completed_at_moonpay_but_never_credited_here_is_a_lost_webhook(
        reconcile, moonpay, onramp, user, books):
    onramp_id, _ = onramp(user, "ETH")
    moonpay.add("mp_lost", onramp_id=onramp_id, user_id=user.id)   # we have the pending on-ramp row
    moonpay.add("mp_stranger", onramp_id=uuid.uuid4())             # we do not even have the row
    reconcile()
    found = mismatches(books)
    assert set(found) == {"moonpay:mp_lost", "moonpay:mp_stranger"}
    lost = found["moonpay:mp_lost"]
    assert lost["severity"] == "high" and lost["metadata"]["kind"] == "completed_not_credited"
    assert lost["metadata"]["onramp_transaction_id"] == str(onramp_id)
    assert lost["metadata"]["onramp_status"] == "pending"
    assert found["moonpay:mp_stranger"]["metadata"]["onramp_transaction_id"] is None
    assert books.read("SELECT status FROM onramp_transactions")[0]["status"] == "pending"  # nothing corrected


def test_a_credit_for_a_transaction_moonpay_did_not_complete_or_does_not_know(reconcile, moonpay, credited, books):
    credited("mp_failed")
    credited("mp_unknown", currency="BTC", amount="0.001")
    moonpay.add("mp_failed", status="failed")
    reconcile()
    kinds = {subject: a["metadata"]["kind"] for subject, a in mismatches(books).items()}
    assert kinds == {"moonpay:mp_failed": "credited_not_completed",
                     "moonpay:mp_unknown": "credited_unknown_at_provider"}


def test_a_credit_outside_moonpays_listing_is_looked_up_by_id(reconcile, moonpay, credited, books, user):
    onramp_id = credited("mp_old")
    # Created at MoonPay long before the window, completed (and credited) within it.
    moonpay.add("mp_old", onramp_id=onramp_id, user_id=user.id, created=NOW - dt.timedelta(days=3))
    assert reconcile()["mismatches"] == 0


def test_amount_or_currency_that_differ_from_moonpays_record(reconcile, moonpay, credited, books, user):
    credited("mp_amount", amount="0.05")
    credited("mp_currency", amount="0.001", currency="BTC")
    moonpay.add("mp_amount", amount="0.06")
    moonpay.add("mp_currency", amount="0.001", currency="sol")
    reconcile()
    found = mismatches(books)
    assert found["moonpay:mp_amount"]["metadata"]["kind"] == "amount_mismatch"
    assert Decimal(found["moonpay:mp_amount"]["metadata"]["moonpay_amount"]) == Decimal("0.06")
    assert [Decimal(a) for a in found["moonpay:mp_amount"]["metadata"]["credited_amounts"]] == [Decimal("0.05")]
    assert found["moonpay:mp_currency"]["metadata"]["kind"] == "currency_mismatch"


def test_two_credits_for_one_moonpay_transaction(app, reconcile, moonpay, credited, crypto_wallet, make_user, books):
    credited("mp_twice")
    other_wallet = crypto_wallet(make_user(), "ETH")
    with app.app_context():  # a second credit with MoonPay's reference, e.g. by a bug on another path
        ledger.credit(wallet_id=other_wallet, amount=Decimal("0.05"), kind="onramp_credit",
                      reference="moonpay:mp_twice", counter_account=SystemAccount.MOONPAY_CLEARING,
                      idempotency_key=ledger.entry_key(source="bug", reference="x", wallet_id=other_wallet,
                                                       action="credit"))
        db.session.remove()
    moonpay.add("mp_twice")
    reconcile()
    alert = mismatches(books)["moonpay:mp_twice"]
    assert alert["metadata"]["kind"] == "duplicate_credit" and len(alert["metadata"]["ledger_transaction_ids"]) == 2


def test_repeated_runs_keep_one_alert_per_transaction(reconcile, moonpay, books):
    moonpay.add("mp_lost")
    reconcile()
    second = reconcile()
    assert second["alerts_new"] == 0 and second["alerts_repeated"] == 1
    assert [a["occurrences"] for a in mismatches(books).values()] == [2]


def test_the_window_starts_where_the_last_successful_run_ended_minus_the_overlap(provider_app, moonpay, books):
    from wallet_api.jobs.runner import run_job

    with provider_app.app_context():
        run_job("provider-reconciliation", lambda: run_provider_reconciliation(now=NOW))
        run_job("provider-reconciliation",
                lambda: run_provider_reconciliation(now=NOW + dt.timedelta(hours=1)))
        db.session.remove()
    first, second = [r["counts"] for r in books.read("SELECT counts FROM job_runs ORDER BY created_at")]
    assert dt.datetime.fromisoformat(first["window_start"]) == NOW - dt.timedelta(hours=24)  # the first look-back
    assert dt.datetime.fromisoformat(second["window_start"]) == NOW - dt.timedelta(minutes=15)
    assert dt.datetime.fromisoformat(second["window_end"]) == NOW + dt.timedelta(hours=1)
    assert moonpay.list_requests[-1]["startDate"] == (NOW - dt.timedelta(minutes=15)).date().isoformat()


@pytest.mark.parametrize("status, body", [(500, '{"message": "down"}'), (200, '{"not": "a list"}'),
                                          (200, '[{"id": "x", "status": "completed", "quoteCurrencyAmount": "NaN"}]')])
def test_a_moonpay_that_fails_or_answers_garbage_fails_the_run_with_job_crash(
        provider_app, moonpay, run_jobs, redis_client, books, status, body):
    from rq import Queue

    moonpay.broken = (status, body)
    Queue("default", connection=redis_client).enqueue("worker.jobs.provider_reconciliation")
    run_jobs(provider_app)
    (run,) = books.read("SELECT status, error FROM job_runs")
    assert run["status"] == "failed" and "MoonPay" in run["error"]
    (alert,) = books.read("SELECT alert_type, metadata FROM alert_log")
    assert alert["alert_type"] == "JOB_CRASH" and alert["metadata"]["job_name"] == "provider-reconciliation"


@pytest.fixture
def scheduled_run(provider_app, books):
    """scheduled_run(now) -> counts: one run through the job runner, as the scheduler runs it (so the
    next run sees this one's window and deferrals)."""
    from wallet_api.jobs.runner import run_job

    def run(now):
        with provider_app.app_context():
            run_job("provider-reconciliation", lambda: run_provider_reconciliation(now=now))
            db.session.remove()
        return books.read("SELECT counts FROM job_runs ORDER BY created_at DESC LIMIT 1")[0]["counts"]

    return run


def test_a_purchase_completed_moments_ago_is_deferred_then_alerted_if_still_not_credited(
        scheduled_run, moonpay, onramp, user, books):
    onramp_id, _ = onramp(user, "ETH")
    # Created hours ago (outside the next run's window), completed a minute ago: its webhook may be on its way.
    moonpay.add("mp_fresh", onramp_id=onramp_id, user_id=user.id, created=NOW - dt.timedelta(hours=3),
                updated=NOW - dt.timedelta(minutes=1))
    first = scheduled_run(NOW)
    assert first["deferred"] == ["mp_fresh"] and first["mismatches"] == 0
    assert mismatches(books) == {}
    # Past the pipeline's promise (stale-after plus one retry interval) and still not credited: lost.
    second = scheduled_run(NOW + dt.timedelta(minutes=20))
    assert dt.datetime.fromisoformat(str(second["window_start"])) > NOW - dt.timedelta(hours=3)
    assert second["deferred"] == []
    assert mismatches(books)["moonpay:mp_fresh"]["metadata"]["kind"] == "completed_not_credited"


def test_a_purchase_whose_webhook_is_still_being_processed_is_not_a_lost_webhook(
        scheduled_run, moonpay, client, run_jobs, onramp, user, books):
    onramp_id, _ = onramp(user, "ETH")
    moonpay.add("mp_busy", onramp_id=onramp_id, user_id=user.id, created=NOW - dt.timedelta(hours=2))
    # Stored and queued, not yet applied by a worker.
    post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, moonpay_id="mp_busy", amount="0.05"))
    assert scheduled_run(NOW)["deferred"] == ["mp_busy"]
    run_jobs()
    later = scheduled_run(NOW + dt.timedelta(minutes=20))
    assert later["deferred"] == [] and later["mismatches"] == 0
    assert mismatches(books) == {}
