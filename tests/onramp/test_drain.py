"""The drain jobs: a stream drain holds the drain lease while it works and lingers for the next event,
so a steady stream of webhooks queues no job per event; it releases the lease before one last look,
so no event is left behind; helpers join a backlog and never hold the lease."""
import threading
import time

import pytest
from rq import Queue

from tests.onramp.support import DRAIN, moonpay_event, post_webhook, queued_functions
from wallet_api.extensions import db
from wallet_api.onramp import apply_job, drain_queue
from wallet_api.onramp.apply_job import drain_pending
from wallet_api.onramp.drain_queue import DRAIN_REQUESTED, HELPER_REQUESTED, LEASE_TTL_SECONDS, DrainLease
from wallet_api.queues import WEBHOOKS


@pytest.fixture
def store(client, user, onramp, redis_client):
    """store(n) stores n pending events (updates of one purchase) through the webhook route."""
    onramp_id, _ = onramp(user)
    counter = iter(range(10_000))

    def post(n: int = 1) -> list[int]:
        stored = []
        for _ in range(n):
            second = next(counter)
            payload = moonpay_event(onramp_id=onramp_id, user_id=user.id, status="pending",
                                    updated_at=f"2026-11-28T10:{second // 60:02d}:{second % 60:02d}.000Z")
            assert post_webhook(client, payload).get_json() == {"received": True}
            stored.append(second)
        return stored

    return post


def forget_queued(redis_client) -> None:
    redis_client.delete(Queue(WEBHOOKS, connection=redis_client).key, DRAIN_REQUESTED, HELPER_REQUESTED)


def queued_kwargs(redis_client) -> list[dict]:
    return [job.kwargs for job in Queue(WEBHOOKS, connection=redis_client).jobs]


def drain(app, **options):
    options.setdefault("budget_seconds", 30)
    options.setdefault("should_stop", lambda: False)
    with app.app_context():
        try:
            return drain_pending(**options)
        finally:
            db.session.remove()


def pending(books) -> int:
    return sum(1 for event in books.events() if event["status"] == "pending")


def test_a_stream_drain_applies_events_that_arrive_while_it_lingers_and_they_queue_no_job(
        app, store, books, redis_client):
    store(1)
    forget_queued(redis_client)  # the first receipt's drain is the one run here
    results = []
    worker = threading.Thread(target=lambda: results.append(drain(app, linger_seconds=3)))
    worker.start()
    deadline = time.monotonic() + 10
    while pending(books) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert redis_client.get(DRAIN_REQUESTED) is not None  # the lease, held while it waits for more
    store(3)  # a stream: each receipt finds the lease and queues nothing
    assert queued_functions(redis_client) == []
    worker.join(timeout=20)
    assert results and results[0].processed == 4 and results[0].more_left is False
    assert pending(books) == 0
    assert redis_client.get(DRAIN_REQUESTED) is None  # released: the next receipt queues a drain
    store(1)
    assert queued_functions(redis_client) == [DRAIN]


def test_an_event_stored_while_the_lease_is_held_is_seen_by_the_look_after_its_release(
        app, store, books, redis_client, monkeypatch):
    forget_queued(redis_client)
    release = DrainLease.release
    arrived = []

    def release_after_a_receipt(lease):
        if not arrived:  # the receipt sees the lease (and queues nothing) an instant before the release
            assert redis_client.get(DRAIN_REQUESTED) is not None
            arrived.extend(store(1))
            assert queued_functions(redis_client) == []
        release(lease)

    monkeypatch.setattr(DrainLease, "release", release_after_a_receipt)
    result = drain(app, linger_seconds=0)
    assert arrived and result.processed == 1 and result.more_left is False
    assert pending(books) == 0 and queued_functions(redis_client) == []


def test_the_lease_is_short_and_renewed_while_the_drain_works(app, store, redis_client, monkeypatch):
    forget_queued(redis_client)
    store(3)
    forget_queued(redis_client)
    monkeypatch.setattr(drain_queue, "LEASE_RENEW_SECONDS", 0)  # renew before every event
    seen = []
    process = apply_job.process_next_pending

    def watching(**kwargs):
        seen.append((redis_client.get(DRAIN_REQUESTED), redis_client.ttl(DRAIN_REQUESTED)))
        return process(**kwargs)

    monkeypatch.setattr(apply_job, "process_next_pending", watching)
    drain(app, linger_seconds=0)
    tokens = {token for token, _ in seen[:3]}
    assert len(tokens) == 1 and None not in tokens and b"queued" not in tokens  # one drain's own token
    assert all(0 < ttl <= LEASE_TTL_SECONDS for _, ttl in seen[:3])


def test_a_drain_that_fails_lets_go_of_the_lease(app, store, redis_client, monkeypatch):
    store(1)
    forget_queued(redis_client)

    def broken(**kwargs):
        raise RuntimeError("database gone")

    monkeypatch.setattr(apply_job, "process_next_pending", broken)
    with pytest.raises(RuntimeError):
        drain(app)
    assert redis_client.get(DRAIN_REQUESTED) is None
    store(1)
    assert queued_functions(redis_client) == [DRAIN]  # RQ retries the failed one; new events do not wait


def test_a_backlog_asks_for_a_helper_which_never_lingers_or_holds_the_lease(app, store, books, redis_client):
    store(2)
    forget_queued(redis_client)
    stop = iter([False, True])  # apply one event, then stop as a warm shutdown would
    result = drain(app, should_stop=lambda: next(stop, True))
    assert result.processed == 1 and result.more_left is True
    # a helper for the backlog, and the stream drain's continuation
    assert queued_kwargs(redis_client) == [{"helper": True}, {}]
    forget_queued(redis_client)
    redis_client.set(DRAIN_REQUESTED, "another drain's lease")
    started = time.monotonic()
    helped = drain(app, helper=True, linger_seconds=5)
    assert helped.processed == 1 and helped.more_left is False
    assert time.monotonic() - started < 5  # it ended as soon as none was left
    assert redis_client.get(DRAIN_REQUESTED) == b"another drain's lease"  # untouched
    assert redis_client.get(HELPER_REQUESTED) is None and pending(books) == 0


def test_a_second_helper_request_while_one_waits_queues_nothing(app, redis_client):
    with app.app_context():
        assert drain_queue.request_drain_now(helper=True) and drain_queue.request_drain_now(helper=True)
    assert queued_kwargs(redis_client) == [{"helper": True}]


def test_the_sweeper_asks_for_a_helper_even_under_a_lease_left_by_a_killed_drain(
        app, store, books, redis_client):
    from wallet_api.onramp.retry_job import run_webhook_maintenance

    store(1)
    forget_queued(redis_client)
    redis_client.set(DRAIN_REQUESTED, "lease of a drain killed a moment ago", ex=LEASE_TTL_SECONDS)
    with app.app_context():
        db.session.execute(db.text("UPDATE webhook_events SET enqueued_at = now() - interval '1 day'"))
        db.session.commit()
        assert run_webhook_maintenance().swept == 1
        db.session.remove()
    assert queued_kwargs(redis_client) == [{"helper": True}]


def test_events_stored_under_the_lease_of_a_killed_drain_are_applied_once_it_lapses(
        app, store, books, redis_client, run_jobs):
    forget_queued(redis_client)
    redis_client.set(DRAIN_REQUESTED, "lease of a drain killed mid-stream", px=700)  # LEASE_TTL_SECONDS, shortened
    store(2)
    assert queued_functions(redis_client) == []  # stranded for now: the dead drain's lease answers for them
    time.sleep(1.0)
    store(1)  # the next receipt after the lapse queues a drain, which applies everything pending
    assert queued_functions(redis_client) == [DRAIN]
    run_jobs()
    assert pending(books) == 0 and len(books.events()) == 3
