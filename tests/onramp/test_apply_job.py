"""Applying a stored MoonPay event: a completed purchase credits once, statuses only move forward,
and anything that does not add up is a recorded failure, never a rounded or guessed credit."""
import uuid
from decimal import Decimal

import pytest

from tests.onramp.support import Num, moonpay_event, post_webhook, utc
from wallet_api.extensions import db
from wallet_api.onramp.apply_job import process_event

NOW = utc(2026, 11, 28, 12, 0)


@pytest.fixture
def deliver(client, books):
    """deliver(payload) -> id of the stored event (through the real webhook route)."""

    def send(payload) -> uuid.UUID:
        res = post_webhook(client, payload)
        assert res.status_code == 200, res.get_json()
        assert "duplicate" not in res.get_json()
        return books.events()[-1]["id"]

    return send


@pytest.fixture
def process(app):
    def run(event_id, now=NOW) -> str:
        with app.app_context():
            try:
                return process_event(event_id=event_id, now=now)
            finally:
                db.session.remove()

    return run


@pytest.fixture
def purchase(user, onramp):
    onramp_id, wallet_id = onramp(user)
    return dict(onramp_id=onramp_id, user_id=user.id, wallet_id=wallet_id)


def event_for(purchase, **kwargs):
    return moonpay_event(onramp_id=purchase["onramp_id"], user_id=purchase["user_id"], **kwargs)


def test_a_completed_purchase_credits_the_wallet_from_moonpay_clearing(purchase, deliver, process, books, db_read):
    event_id = deliver(event_for(purchase, amount="0.123456789012345678", crypto_tx="0xabc"))
    assert process(event_id) == "credited"

    assert books.balance(purchase["wallet_id"]) == Decimal("0.123456789012345678")  # every digit, no float
    row = books.onramp(purchase["onramp_id"])
    assert row["status"] == "completed"
    assert row["moonpay_transaction_id"] == "mp_tx_1"
    assert row["crypto_transaction_id"] == "0xabc"
    assert row["quote_currency_amount"] == Decimal("0.123456789012345678")
    assert row["completed_at"] == NOW
    (ledger_tx,) = db_read("SELECT * FROM ledger_transactions")
    assert row["ledger_transaction_id"] == ledger_tx["id"]
    assert ledger_tx["kind"] == "onramp_credit"
    assert ledger_tx["idempotency_key"] == f"webhook:moonpay:mp_tx_1:{purchase['wallet_id']}:credit"
    assert ledger_tx["metadata"] == {"moonpay_transaction_id": "mp_tx_1", "crypto_transaction_id": "0xabc",
                                     "onramp_transaction_id": str(purchase["onramp_id"]),
                                     "event_id": str(event_id)}
    clearing = db_read("""SELECT e.amount FROM ledger_entries e JOIN wallets w ON w.id = e.wallet_id
                          WHERE w.system_account = 'moonpay_clearing'""")
    assert [r["amount"] for r in clearing] == [Decimal("-0.123456789012345678")]
    event = books.event(event_id)
    assert (event["status"], event["outcome"], event["attempts"]) == ("processed", "credited", 1)


def test_processing_an_event_again_is_a_no_op(purchase, deliver, process, books):
    event_id = deliver(event_for(purchase))
    assert process(event_id) == "credited"
    assert process(event_id) == "already_processed"
    assert books.credits(purchase["wallet_id"]) == 1


def test_a_second_delivery_of_the_completion_does_not_credit_again(purchase, deliver, process, books):
    first = deliver(event_for(purchase, updated_at="2026-11-28T10:00:00Z"))
    second = deliver(event_for(purchase, updated_at="2026-11-28T10:00:05Z", event_type="transaction_created"))
    assert process(first) == "credited"
    assert process(second) == "already_completed"
    assert books.balance(purchase["wallet_id"]) == Decimal("0.05")
    assert books.event(second)["status"] == "processed"


def test_out_of_order_a_late_pending_never_overwrites_completed(purchase, deliver, process, books):
    completed = deliver(event_for(purchase, status="completed", updated_at="2026-11-28T10:05:00Z"))
    pending = deliver(event_for(purchase, status="pending", updated_at="2026-11-28T10:01:00Z", amount=None))
    assert process(completed) == "credited"
    assert process(pending) == "stale_status_ignored"
    assert books.onramp(purchase["onramp_id"])["status"] == "completed"
    assert books.event(pending)["status"] == "processed"


def test_pending_states_move_sideways_only_with_newer_news(purchase, deliver, process, books):
    waiting = deliver(event_for(purchase, status="waitingAuthorization", updated_at="2026-11-28T10:02:00Z"))
    older = deliver(event_for(purchase, status="waitingPayment", updated_at="2026-11-28T10:01:00Z"))
    assert process(waiting) == "status_waiting_authorization"
    row = books.onramp(purchase["onramp_id"])
    assert row["status"] == "waiting_authorization" and row["moonpay_transaction_id"] == "mp_tx_1"
    assert process(older) == "stale_status_ignored"
    assert books.onramp(purchase["onramp_id"])["status"] == "waiting_authorization"
    assert books.credits(purchase["wallet_id"]) == 0


def test_a_failed_purchase_is_marked_failed_with_the_reason(purchase, deliver, process, books):
    event_id = deliver(event_for(purchase, status="failed", event_type="transaction_failed", amount=None,
                                 failure_reason="Card declined"))
    assert process(event_id) == "marked_failed"
    row = books.onramp(purchase["onramp_id"])
    assert (row["status"], row["failure_reason"], row["failed_at"]) == ("failed", "Card declined", NOW)
    assert books.credits(purchase["wallet_id"]) == 0
    late_pending = deliver(event_for(purchase, status="pending", updated_at="2026-11-28T09:00:00Z"))
    assert process(late_pending) == "stale_status_ignored"
    assert books.onramp(purchase["onramp_id"])["status"] == "failed"


def test_completed_after_failed_is_a_conflict_for_a_human(purchase, deliver, process, books):
    failed = deliver(event_for(purchase, status="failed", amount=None, updated_at="2026-11-28T10:00:00Z"))
    completed = deliver(event_for(purchase, status="completed", updated_at="2026-11-28T10:09:00Z"))
    process(failed)
    assert process(completed) == "retry_scheduled"
    event = books.event(completed)
    assert "conflicting terminal status" in event["last_error"]
    assert books.onramp(purchase["onramp_id"])["status"] == "failed"
    assert books.credits(purchase["wallet_id"]) == 0


@pytest.mark.parametrize("currency, amount, credited", [
    ("ETH", "1.000000000000000001", "1.000000000000000001"),  # 18 decimals: exact
    ("USDC", "25.50000000", "25.500000"),  # trailing zeros beyond precision lose nothing
    ("BTC", "0.00000001", "0.00000001"),
    ("BTC", "12", "12.00000000"),
])
def test_amounts_at_the_currency_precision_are_credited_exactly(user, onramp, deliver, process, books,
                                                                currency, amount, credited):
    onramp_id, wallet_id = onramp(user, currency)
    event_id = deliver(moonpay_event(onramp_id=onramp_id, user_id=user.id, amount=amount, currency=currency.lower()))
    assert process(event_id) == "credited"
    assert books.balance(wallet_id) == Decimal(credited)
    assert str(books.onramp(onramp_id)["quote_currency_amount"].normalize()) == str(Decimal(credited).normalize())


@pytest.mark.parametrize("currency, amount", [
    ("ETH", "0.1234567890123456789"),  # 19 decimals
    ("USDC", "10.1234567"),
    ("BTC", "0.000000001"),
])
def test_more_decimals_than_the_currency_allows_is_refused_not_rounded(user, onramp, deliver, process, books,
                                                                        currency, amount):
    onramp_id, wallet_id = onramp(user, currency)
    event_id = deliver(moonpay_event(onramp_id=onramp_id, user_id=user.id, amount=amount, currency=currency.lower()))
    assert process(event_id) == "retry_scheduled"
    assert "refusing to round" in books.event(event_id)["last_error"]
    assert books.credits(wallet_id) == 0
    assert books.onramp(onramp_id)["status"] == "pending"


@pytest.mark.parametrize("change, error", [
    (dict(currency="btc"), "currency mismatch"),
    (dict(currency="doge"), "currency mismatch"),
    (dict(amount=None), "quoteCurrencyAmount is missing"),
    (dict(amount="0"), "greater than zero"),
])
def test_a_completion_that_does_not_match_the_purchase_is_a_failure(purchase, deliver, process, books, change, error):
    event_id = deliver(event_for(purchase, **change))
    assert process(event_id) == "retry_scheduled"
    event = books.event(event_id)
    assert error in event["last_error"]
    assert event["next_attempt_at"] == utc(2026, 11, 28, 12, 1)
    assert books.credits(purchase["wallet_id"]) == 0


def test_an_unknown_or_missing_external_transaction_id_is_a_failure(user, deliver, process, books):
    unknown = deliver(moonpay_event(onramp_id=uuid.uuid4(), user_id=user.id, moonpay_id="mp_a"))
    missing = deliver(moonpay_event(onramp_id=None, user_id=user.id, moonpay_id="mp_b"))
    not_ours = deliver(moonpay_event(onramp_id=None, user_id=user.id, moonpay_id="mp_c",
                                     externalTransactionId="order-42"))
    assert [process(e) for e in (unknown, missing, not_ours)] == ["retry_scheduled"] * 3
    assert "unknown on-ramp transaction" in books.event(unknown)["last_error"]
    assert "externalTransactionId is missing" in books.event(missing)["last_error"]
    assert "unknown on-ramp transaction" in books.event(not_ours)["last_error"]


def test_another_users_customer_id_is_refused(purchase, deliver, process, books):
    event_id = deliver(moonpay_event(onramp_id=purchase["onramp_id"], user_id=uuid.uuid4()))
    assert process(event_id) == "retry_scheduled"
    assert "externalCustomerId" in books.event(event_id)["last_error"]


def test_a_second_moonpay_transaction_for_one_purchase_goes_to_a_human(purchase, deliver, process, books):
    first = deliver(event_for(purchase, moonpay_id="mp_first"))
    second = deliver(event_for(purchase, moonpay_id="mp_second", updated_at="2026-11-28T11:00:00Z"))
    assert process(first) == "credited"
    assert process(second) == "retry_scheduled"
    assert "already bound to MoonPay transaction mp_first" in books.event(second)["last_error"]
    assert books.credits(purchase["wallet_id"]) == 1


def test_a_json_float_amount_never_passes_through_a_binary_float(purchase, deliver, process, books):
    # 0.1 + 0.2 style values: as floats they would not be 0.3; parsed as decimals they are exact.
    event_id = deliver(event_for(purchase, amount="0.30000000000000001"))
    assert process(event_id) == "credited"
    assert books.balance(purchase["wallet_id"]) == Decimal("0.30000000000000001")


def test_a_missing_event_is_reported_not_raised(process):
    assert process(uuid.uuid4()) == "missing"


def test_the_failure_reason_is_recorded_with_the_attempt(purchase, deliver, process, books):
    event_id = deliver(event_for(purchase, currency="sol", baseCurrencyAmount=Num("5")))
    process(event_id)
    event = books.event(event_id)
    assert (event["status"], event["attempts"], event["last_attempt_at"]) == ("retry_scheduled", 1, NOW)


def test_an_interrupted_run_rolls_back_and_consumes_no_attempt(purchase, deliver, process, books, monkeypatch):
    from rq.timeouts import JobTimeoutException

    from wallet_api.onramp import apply_job

    event_id = deliver(event_for(purchase))

    def interrupted(**kwargs):
        raise JobTimeoutException("job exceeded its timeout")

    monkeypatch.setattr(apply_job, "_apply", interrupted)
    with pytest.raises(JobTimeoutException):
        process(event_id)
    event = books.event(event_id)
    assert (event["status"], event["attempts"], event["last_error"]) == ("pending", 0, None)


def test_an_unexpected_bug_is_recorded_so_it_ends_with_a_human(purchase, deliver, process, books, monkeypatch):
    from wallet_api.onramp import apply_job

    event_id = deliver(event_for(purchase))
    monkeypatch.setattr(apply_job, "_apply", lambda **kwargs: {}["missing"])
    assert process(event_id) == "retry_scheduled"
    assert books.event(event_id)["last_error"] == "unexpected error: KeyError: 'missing'"


def test_a_failure_after_the_credit_was_written_rolls_the_credit_back(purchase, deliver, process, books,
                                                                       monkeypatch, caplog):
    from wallet_api.onramp import apply_job

    real_credit = apply_job.ledger.credit

    def credit_then_fail(**kwargs):
        real_credit(**kwargs)  # written to the database, not committed
        raise apply_job.ProcessingError("refused after the credit")

    monkeypatch.setattr(apply_job.ledger, "credit", credit_then_fail)
    event_id = deliver(event_for(purchase))
    assert process(event_id) == "retry_scheduled"
    event = books.event(event_id)
    assert (event["status"], event["attempts"], event["last_error"]) == \
        ("retry_scheduled", 1, "refused after the credit")
    assert books.credits(purchase["wallet_id"]) == 0 and books.balance(purchase["wallet_id"]) == 0
    assert books.onramp(purchase["onramp_id"])["status"] == "pending"
    assert books.unbalanced_transactions() == 0
    # The credit's audit line waits for a commit that never came.
    assert not any("money_moved" in record.getMessage() for record in caplog.records)

    monkeypatch.undo()
    assert process(event_id) == "credited"  # the retry credits once
    assert books.credits(purchase["wallet_id"]) == 1


def test_a_failed_attempt_is_not_recorded_over_an_event_someone_moved_on_meanwhile(
        purchase, deliver, process, books, monkeypatch, services):
    """The failure is recorded in a new transaction, after the rollback let go of the event's lock:
    if another worker applied the event in between, this attempt is dropped, not counted."""
    from tests.conftest import write_around_triggers
    from wallet_api.onramp import apply_job

    event_id = deliver(event_for(purchase))
    real_lock = apply_job._lock_event
    calls = []

    def lock(locked_id):
        calls.append(locked_id)
        if len(calls) == 2:  # relocking to record the failure: another worker got there first
            write_around_triggers(services.superuser_url,
                                  "UPDATE webhook_events SET status = 'processed', attempts = 1, "
                                  "outcome = 'credited', processed_at = now() WHERE id = %(id)s", id=event_id)
        return real_lock(locked_id)

    monkeypatch.setattr(apply_job, "_lock_event", lock)
    monkeypatch.setattr(apply_job, "_apply", lambda **kwargs: {}["missing"])
    assert process(event_id) == "already_processed"
    event = books.event(event_id)
    assert (event["status"], event["attempts"], event["last_error"]) == ("processed", 1, None)
