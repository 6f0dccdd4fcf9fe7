"""A failing event walks the retry schedule (1, 5, 15, 30, 60 minutes) on a controllable clock, then
lands in the dead letter queue with a WEBHOOK_FAILURE alert; the sweeper recovers lost jobs."""
import datetime as dt
from decimal import Decimal

import pytest
from rq import Queue

from tests.onramp.support import DRAIN, moonpay_event, post_webhook, queued_functions, utc
from wallet_api.extensions import db
from wallet_api.metrics import WEBHOOK_EVENTS
from wallet_api.onramp.apply_job import process_event
from wallet_api.onramp.drain_queue import DRAIN_REQUESTED, HELPER_REQUESTED
from wallet_api.onramp.retry_job import run_webhook_maintenance
from wallet_api.queues import WEBHOOKS

T0 = utc(2026, 11, 28, 12, 0)
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def clock_app(app):
    """Run service functions at a given time, each in a fresh app context."""

    class Clock:
        def process(self, event_id, at):
            with app.app_context():
                try:
                    return process_event(event_id=event_id, now=at)
                finally:
                    db.session.remove()

        def maintain(self, at):
            with app.app_context():
                try:
                    return run_webhook_maintenance(now=at)
                finally:
                    db.session.remove()

    return Clock()


@pytest.fixture
def failing_event(client, user, onramp, books):
    """A completion whose currency does not match the purchase: every run fails."""
    onramp_id, wallet_id = onramp(user, "ETH")
    post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, currency="btc"))
    (event,) = books.events()
    return event["id"]


def forget_queued(redis_client):
    """Empty the webhooks queue (and the drain flags): the test runs events by hand."""
    redis_client.delete(Queue(WEBHOOKS, connection=redis_client).key, DRAIN_REQUESTED, HELPER_REQUESTED)


def test_a_failing_event_walks_the_backoff_schedule_into_the_dlq(clock_app, failing_event, books, redis_client,
                                                                db_read):
    forget_queued(redis_client)  # the receipt's own drain: we run the event by hand
    assert clock_app.process(failing_event, T0) == "retry_scheduled"
    at, generation = T0, 1
    for retry, minutes in enumerate([1, 5, 15, 30, 60], start=1):
        due = at + minutes * MINUTE
        event = books.event(failing_event)
        assert (event["status"], event["attempts"], event["next_attempt_at"]) == ("retry_scheduled", retry, due)
        assert "currency mismatch" in event["last_error"]

        early = clock_app.maintain(due - dt.timedelta(seconds=1))
        assert early.retried == 0 and books.event(failing_event)["status"] == "retry_scheduled"  # not due yet
        forget_queued(redis_client)
        assert clock_app.maintain(due).retried == 1
        generation += 1
        event = books.event(failing_event)
        assert (event["status"], event["enqueue_count"], event["enqueued_at"]) == ("pending", generation, due)
        assert queued_functions(redis_client) == [DRAIN]
        assert clock_app.maintain(due).retried == 0  # claimed once, never twice
        forget_queued(redis_client)

        at = due
        outcome = clock_app.process(failing_event, at)
        assert outcome == ("retry_scheduled" if retry < 5 else "dead_lettered")

    event = books.event(failing_event)
    assert (event["status"], event["attempts"], event["next_attempt_at"]) == ("dead_lettered", 6, None)
    (entry,) = db_read("SELECT * FROM dead_letter_queue")
    assert entry["event_id"] == failing_event
    assert (entry["provider"], entry["external_id"], entry["attempts"]) == ("moonpay", "mp_tx_1", 6)
    assert "currency mismatch" in entry["failure_reason"]
    assert entry["payload"] == event["payload"]
    assert entry["resolved_at"] is None
    (alert,) = db_read("SELECT * FROM alert_log")
    assert (alert["alert_type"], alert["severity"], alert["resolved"]) == ("WEBHOOK_FAILURE", "high", False)
    assert alert["metadata"]["event_id"] == str(failing_event)
    assert alert["metadata"]["external_id"] == "mp_tx_1" and alert["metadata"]["attempts"] == 6
    assert "currency mismatch" in alert["metadata"]["failure_reason"]

    # Parked for good: neither the retry job nor the sweeper touches it, and a stray job is a no-op.
    later = clock_app.maintain(at + dt.timedelta(days=2))
    assert (later.retried, later.swept) == (0, 0)
    assert clock_app.process(failing_event, at + dt.timedelta(days=2)) == "already_dead_lettered"
    assert books.count("dead_letter_queue") == 1 and books.count("alert_log") == 1


def test_the_number_of_retries_comes_from_settings(make_settings_app, failing_event, books):
    app = make_settings_app(webhook_max_retries=2)
    at = T0
    outcomes = []
    with app.app_context():
        for _ in range(3):
            outcomes.append(process_event(event_id=failing_event, now=at))
            db.session.remove()
            at += dt.timedelta(hours=2)
    assert outcomes == ["retry_scheduled", "retry_scheduled", "dead_lettered"]


def test_the_sweeper_re_enqueues_only_stale_pending_events(clock_app, client, user, onramp, books, redis_client,
                                                          settings):
    onramp_id, _ = onramp(user)
    post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, status="pending"))
    post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, moonpay_id="mp_other",
                                       updated_at="2026-11-28T11:00:00Z"))
    pending, doomed = (e["id"] for e in books.events())
    received = books.event(pending)["received_at"]
    stale = dt.timedelta(seconds=settings.webhook_stale_after_seconds)
    redis_client.flushdb()

    assert clock_app.process(pending, received) == "status_pending"  # processed: never swept
    assert clock_app.process(doomed, received) == "retry_scheduled"  # waiting for its retry: not swept
    result = clock_app.maintain(received + stale + MINUTE)
    assert (result.retried, result.swept) == (1, 0)  # the retry became due (1 min); nothing else is stale
    assert books.event(doomed)["enqueue_count"] == 2 and books.event(pending)["enqueue_count"] == 1
    assert queued_functions(redis_client) == [DRAIN]


def test_the_sweeper_takes_lost_events_and_leaves_locked_ones(clock_app, client, user, onramp, books, settings):
    from tests.onramp.support import RowLock

    onramp_id, _ = onramp(user)
    for hour in (10, 11):
        post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, status="pending",
                                           updated_at=f"2026-11-28T{hour}:00:00Z"))
    first, second = (e["id"] for e in books.events())
    later = books.event(second)["received_at"] + dt.timedelta(seconds=settings.webhook_stale_after_seconds + 1)
    with RowLock(settings, "webhook_events", first):  # being processed right now
        result = clock_app.maintain(later)
    assert result.swept == 1
    assert books.event(second)["enqueue_count"] == 2 and books.event(first)["enqueue_count"] == 1
    # Once its lock is gone the first is swept too; the second, just re-enqueued, is not stale any more.
    assert clock_app.maintain(later).swept == 1
    assert books.event(second)["enqueue_count"] == 2 and books.event(first)["enqueue_count"] == 2


def test_with_redis_down_the_retry_job_leaves_events_for_the_next_sweep(settings, failing_event, books):
    from tests.conftest import make_settings
    from wallet_api import create_app

    down = create_app(make_settings(database_url=settings.database_url, redis_url="redis://127.0.0.1:1/0"))
    with down.app_context():
        process_event(event_id=failing_event, now=T0)
        result = run_webhook_maintenance(now=T0 + MINUTE)
        db.session.remove()
    assert (result.retried, result.enqueue_failed) == (1, 1)
    assert books.event(failing_event)["status"] == "pending"  # the sweeper's to find once stale


def test_replay_credits_once_even_when_another_delivery_already_did(clock_app, client, app, user, onramp, books,
                                                                    admin):
    """A completion dead-lettered while a second delivery of it succeeded: replaying must not pay twice."""
    from sqlalchemy import text

    from wallet_api.onramp.dead_letters import resolve_dlq

    onramp_id, wallet_id = onramp(user)
    post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, updated_at="2026-11-28T10:00:00Z"))
    (event_id,) = (e["id"] for e in books.events())
    # Make this event fail until it is dead-lettered (the on-ramp row is briefly unknown to it).
    with app.app_context():
        db.session.execute(text("UPDATE webhook_events SET payload = replace(payload, :a, :b) WHERE id = :i"),
                           {"a": str(onramp_id), "b": "00000000-0000-4000-8000-000000000000", "i": event_id})
        db.session.commit()
        db.session.remove()
    at = T0
    for _ in range(6):
        clock_app.process(event_id, at)
        at += dt.timedelta(hours=2)
    assert books.event(event_id)["status"] == "dead_lettered"
    with app.app_context():  # the operator fixes the cause
        db.session.execute(text("UPDATE webhook_events SET payload = replace(payload, :b, :a) WHERE id = :i"),
                           {"a": str(onramp_id), "b": "00000000-0000-4000-8000-000000000000", "i": event_id})
        db.session.commit()
        db.session.remove()
    # Meanwhile MoonPay's redelivery with a newer updatedAt credited the wallet.
    post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, updated_at="2026-11-28T10:00:09Z"))
    redelivery = books.events()[-1]["id"]
    assert clock_app.process(redelivery, at) == "credited"

    with app.app_context():
        (entry_id,) = db.session.execute(text("SELECT id FROM dead_letter_queue")).scalars()
        resolve_dlq(entry_id=entry_id, action="replay", note="cause fixed", admin_id=admin.id, now=at)
        db.session.remove()
    event = books.event(event_id)
    assert (event["status"], event["attempts"]) == ("pending", 0)
    assert clock_app.process(event_id, at) == "already_completed"
    assert books.balance(wallet_id) == Decimal("0.05")
    assert books.credits(wallet_id) == 1


def test_processing_outcomes_are_counted(clock_app, failing_event):
    before = WEBHOOK_EVENTS.labels("moonpay", "process", "retry_scheduled")._value.get()
    clock_app.process(failing_event, T0)
    assert WEBHOOK_EVENTS.labels("moonpay", "process", "retry_scheduled")._value.get() == before + 1


def test_the_retry_delays_come_from_settings(make_settings_app, failing_event, books):
    app = make_settings_app(webhook_max_retries=3, webhook_retry_backoff_seconds=(2, 5))
    at, delays = T0, []
    with app.app_context():
        for _ in range(3):
            assert process_event(event_id=failing_event, now=at) == "retry_scheduled"
            db.session.remove()
            delays.append((books.event(failing_event)["next_attempt_at"] - at).total_seconds())
            at += dt.timedelta(hours=2)
        assert process_event(event_id=failing_event, now=at) == "dead_lettered"
    assert delays == [2, 5, 5]  # retries beyond the list wait its last delay
