"""GET /metrics in one process: Prometheus text, requests labelled by route template, gauges read from
PostgreSQL and Redis at scrape time (each source failing alone), METRICS_TOKEN, no rate limit.
Across gunicorn workers: tests/app/test_metrics_web_process.py."""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry

from tests.onramp.support import moonpay_event, park_in_dlq, post_webhook
from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import raise_alert
from wallet_api.extensions import db
from wallet_api.jobs.runner import run_job
from wallet_api.onramp.dead_letters import resolve_dlq

TOKEN = "metrics-token-0123456789abcdef-0123456789"
ROOT = Path(__file__).resolve().parents[2]


def scrape(client, **kwargs) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    res = client.get("/metrics", **kwargs)
    assert res.status_code == 200, res.get_data(as_text=True)
    assert res.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(res.get_data(as_text=True)) for s in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_are_counted_by_route_template_never_by_raw_path(client, user, auth_headers):
    before = scrape(client)
    missing = uuid.uuid4()
    for _ in range(3):
        assert client.get(f"/wallets/{missing}", headers=auth_headers(user)).status_code == 404
    assert client.get(f"/no/such/{uuid.uuid4()}").status_code == 404
    after = scrape(client)

    route = {"route": "/wallets/<uuid:wallet_id>", "method": "GET", "status": "404"}
    assert value(after, "wallet_http_requests_total", **route) - value(before, "wallet_http_requests_total",
                                                                      **route) == 3
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert value(after, "wallet_http_requests_total", **unmatched) - value(
        before, "wallet_http_requests_total", **unmatched) == 1
    assert value(after, "wallet_http_request_seconds_count", route="/wallets/<uuid:wallet_id>", method="GET") - value(
        before, "wallet_http_request_seconds_count", route="/wallets/<uuid:wallet_id>", method="GET") == 3
    assert not [key for key in after if str(missing) in str(key)], "a raw path became a label"


def test_transfers_move_the_ledger_counters_with_outcome_and_amount(client, user, auth_headers, funded_wallet,
                                                                    make_wallet):
    source, target = funded_wallet("10.00", user=user), make_wallet()
    before = scrape(client)
    body = {"from_wallet_id": str(source), "to_wallet_id": str(target), "amount": "2.50"}
    assert client.post("/transfers", json=body, headers=auth_headers(user)).status_code == 201
    assert client.post("/transfers", json={**body, "amount": "99.00"},
                       headers=auth_headers(user)).status_code == 422
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("wallet_ledger_operations_total", operation="transfer", currency="USD", outcome="ok") == 1
    assert delta("wallet_ledger_operations_total", operation="transfer", currency="", outcome="insufficient_funds") == 1
    assert delta("wallet_ledger_amount_total", operation="transfer", currency="USD") == pytest.approx(2.5)
    assert delta("wallet_ledger_operation_seconds_count", operation="transfer") == 2


def test_scrape_time_gauges_count_queues_failed_jobs_the_dlq_waiting_events_alerts_and_job_successes(
        make_settings_app, user, admin, redis_client):
    app = make_settings_app()  # its own gauge cache
    client = app.test_client()
    dlq_entry = park_in_dlq(app, client, moonpay_event(onramp_id=uuid.uuid4(), user_id=user.id,
                                                       moonpay_id="mp_metrics"))
    post_webhook(client, moonpay_event(onramp_id=uuid.uuid4(), user_id=user.id, moonpay_id="mp_waiting",
                                       status="pending"))
    with app.app_context():
        for subject in ("wallet:a", "wallet:b"):
            raise_alert(alert_type=AlertType.CREDIT_SPIKE, subject=subject, title="t", message="m")
        db.session.commit()
        run_job("webhook-retry", lambda: {})
        db.session.remove()
    redis_client.flushdb()  # the drain jobs the webhooks asked for: count only what this test queues
    default, webhooks = Queue("default", connection=redis_client), Queue("webhooks", connection=redis_client)
    for _ in range(3):
        default.enqueue("worker.jobs.nothing_here")
    webhooks.enqueue("worker.jobs.nothing_here")
    failed = Job.create("worker.jobs.nothing_here", connection=redis_client, origin="default")
    failed.save()
    FailedJobRegistry("default", connection=redis_client).add(failed, ttl=3600)

    samples = scrape(client)
    assert value(samples, "wallet_queue_jobs", queue="default") == 3
    assert value(samples, "wallet_queue_jobs", queue="webhooks") == 1
    assert value(samples, "wallet_queue_failed_jobs", queue="default") == 1
    assert value(samples, "wallet_queue_failed_jobs", queue="webhooks") == 0
    assert value(samples, "wallet_dlq_entries") == 1
    assert value(samples, "wallet_webhook_events_waiting", status="pending") == 1
    assert value(samples, "wallet_alerts_open", alert_type="CREDIT_SPIKE", severity="medium") == 2
    # The dead-lettered event raised its own alert; every other type is reported, at zero.
    assert value(samples, "wallet_alerts_open", alert_type="WEBHOOK_FAILURE", severity="high") == 1
    assert ("wallet_alerts_open", (("alert_type", "BALANCE_MISMATCH"), ("severity", "critical"))) in samples
    assert 0 <= value(samples, "wallet_job_seconds_since_success", job="webhook-retry") < 60
    assert value(samples, "wallet_job_seconds_since_success", job="wallet-reconciliation") == float("inf")
    sources = ("redis", "alerts", "jobs", "webhooks")
    assert {value(samples, "wallet_metrics_source_up", source=s) for s in sources} == {1}

    discarded = {"provider": "moonpay", "stage": "dead_letter", "outcome": "discard"}
    with app.app_context():
        resolve_dlq(entry_id=dlq_entry, action="discard", note="seen", admin_id=admin.id)
        db.session.remove()
    app.extensions["scrape_gauges"].cache_seconds = 0
    after = scrape(client)
    assert value(after, "wallet_dlq_entries") == 0
    assert value(after, "wallet_webhook_events_total", **discarded) - value(
        samples, "wallet_webhook_events_total", **discarded) == 1


def test_a_down_redis_leaves_its_gauges_out_and_the_others_in(make_settings_app):
    client = make_settings_app(redis_url="redis://127.0.0.1:1/0").test_client()
    samples = scrape(client)
    assert value(samples, "wallet_metrics_source_up", source="redis") == 0
    assert value(samples, "wallet_metrics_source_up", source="alerts") == 1
    assert value(samples, "wallet_metrics_source_up", source="webhooks") == 1
    assert not [key for key in samples if key[0].startswith("wallet_queue_")]
    assert ("wallet_dlq_entries", ()) in samples


def test_metrics_token_when_set_is_required_as_a_bearer_token(make_settings_app):
    client = make_settings_app(metrics_token=TOKEN).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        res = client.get("/metrics", headers=headers)
        assert res.status_code == 401, headers
        assert res.get_json()["error"] == "invalid_metrics_token"
        assert res.headers["WWW-Authenticate"] == "Bearer"
        assert TOKEN not in res.get_data(as_text=True)
    assert scrape(client, headers={"Authorization": f"Bearer {TOKEN}"})


def test_metrics_is_never_rate_limited(make_settings_app):
    from wallet_api.config import RateLimits

    tight = RateLimits(**{name: "2/minute" for name in RateLimits.__dataclass_fields__})
    client = make_settings_app(ratelimit_enabled=True, rate_limits=tight).test_client()
    responses = [client.get("/metrics") for _ in range(30)]
    assert [r.status_code for r in responses] == [200] * 30
    assert "X-RateLimit-Limit" not in responses[-1].headers


def test_production_serves_metrics_over_plain_http_to_a_scraper_on_the_private_network(make_settings_app):
    production = make_settings_app(app_env="production").test_client()
    assert production.get("/metrics", base_url="http://10.0.0.5:8000").status_code == 200
    assert production.get("/wallets", base_url="http://10.0.0.5:8000").status_code == 308  # the API stays HTTPS


def test_a_process_given_a_metrics_directory_that_does_not_exist_yet_still_counts(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR reaches worker dynos too, where nothing prepared it."""
    missing = tmp_path / "not-made-yet"
    code = ("from decimal import Decimal; from wallet_api import metrics; metrics.record_ledger_operation("
            "operation='credit', success=True, amount=Decimal('1'), currency='USD', duration_s=0.01)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(missing)})
    assert list(missing.glob("counter_*.db"))
