"""One fault of the chaos run, pinned down: PostgreSQL terminates the connection of a drain in the
middle of its transaction (pg_terminate_backend, a failover, a restart). Nothing of the transaction
remains, the event keeps all its attempts (the database's failure is not the event's), the worker
process carries on, and the next drain credits the purchase exactly once."""
import signal
from decimal import Decimal

import psycopg2
import pytest

from tests.onramp.support import (RowLock, backend_alive, finish, kill_tree, moonpay_event, post_webhook,
                                  start_worker_process, wait_for)
from wallet_api.onramp.retry_job import run_webhook_maintenance

pytestmark = pytest.mark.slow


def test_a_drain_whose_connection_is_terminated_mid_transaction_consumes_no_attempt(
        client, app, user, onramp, settings, services, books):
    onramp_id, wallet_id = onramp(user, "ETH")
    assert post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, amount="0.75")).status_code == 200
    worker = start_worker_process(settings, burst=False, LOG_LEVEL="INFO")
    try:
        with RowLock(settings, "onramp_transactions", onramp_id) as lock:
            # The drain has claimed the event (its row locked, attempts bumped in the transaction) and waits for ours.
            (backend,) = wait_for(lock.waiting_backends, timeout=30, message="the drain to block on the purchase")
            admin = psycopg2.connect(services.superuser_url)
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s)", (backend,))
            admin.close()
            wait_for(lambda: not backend_alive(settings, backend), timeout=10, message="the backend to end")
        event = books.events()[0]
        assert (event["status"], event["attempts"], event["last_error"]) == ("pending", 0, None)
        assert books.credits(wallet_id) == 0
        assert worker.poll() is None  # a failed job, not a dead worker

        with app.app_context():
            run_webhook_maintenance()  # the periodic job asks for a drain
        wait_for(lambda: books.events()[0]["status"] == "processed", timeout=30, message="the event to be applied")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            output = finish(worker, timeout=30)
        finally:
            kill_tree(worker.pid)
    assert worker.returncode == 0, output
    event = books.events()[0]
    assert (event["outcome"], event["attempts"]) == ("credited", 1)
    assert books.balance(wallet_id) == Decimal("0.75") and books.credits(wallet_id) == 1
