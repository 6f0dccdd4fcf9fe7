"""Log lines carry their context (request, user, wallet, provider event, job), the request id follows
a request into the jobs it enqueued, money movements and admin actions reach the AUDIT channel, and
no secret or card number reaches any line."""
import io
import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import structlog
from rq import Queue

from tests.onramp.support import finish, moonpay_event, post_webhook, start_worker_process
from wallet_api.logging import bind_job, configure_logging
from wallet_api.queues import DEFAULT, with_origin

SCRIPT = """
import logging, structlog
from wallet_api.logging import configure_logging
configure_logging(level="INFO", json=True)
log = structlog.get_logger("probe")
log.info("login", email="a@example.com", password="hunter2", headers={"Authorization": "Bearer abc.def"})
log.info("webhook", signature="deadbeef", payload={"nested": {"api_key": "sk_live_x", "amount": "1.5"}})
log.debug("invisible at INFO", secret="never")
logging.getLogger("rq.worker").info("stdlib line")
"""

# Every value here is a secret or a card number that must not appear in any rendered line.
SECRETS = {
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLXZhbHVl",
    "bearer": "opaque-bearer-9f8e7d6c5b",
    "password": "correct horse battery",
    "password_in_text": "s3cr3t-pw",
    "refresh": "rt_Zq8Xv2Lm4Np6",
    "signature": "t=1732780800,s=9b1f0c2d3e4f",
    "card_spaces": "4111 1111 1111 1111",
    "card_dashes": "5500-0055-5555-5559",
    "card_plain": "378282246310005",
    "db_password": "pgpass-7Yt",
    "moonpay_key": "sk_live_K3p8Wq1Zr6Tx9Vm2",
    "cookie": "session=abc123def456",
}
STRUCTURE = f"""
import logging, structlog
from wallet_api.logging import configure_logging
configure_logging(level="INFO", json=True)
log = structlog.get_logger("probe")
S = {SECRETS!r}
log.info("nested", request={{
    "headers": [("Authorization", "Bearer " + S["bearer"]), ("Cookie", S["cookie"])],
    "body": [{{"user": {{"password": S["password"], "cards": [S["card_spaces"], {{"pan": S["card_plain"]}}]}}}}],
    "tokens": ({{"refresh_token": S["refresh"]}}, "jwt " + S["jwt"]),
}}, amount="0.050000000000000000", wallet_id="3f2a6c1e-1234-4d3b-9abc-0123456789ab")
log.info("login failed for a@example.com with password=" + S["password_in_text"] + " from 10.0.0.1")
log.warning("MoonPay answered 401", detail="Moonpay-Signature-V2: " + S["signature"], card=S["card_dashes"])
log.info("database", url="postgresql://wallet:" + S["db_password"] + "@db:5432/wallet", note="key " + S["moonpay_key"])
logging.getLogger("rq.worker").info("job %s: Authorization: Bearer %s", "j1", S["jwt"])
try:
    raise ValueError("refused token=" + S["refresh"])
except ValueError:
    log.exception("failed")
"""


def _run(script: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_secret_values_are_redacted_and_lines_are_json():
    proc = _run(SCRIPT)
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    text = proc.stderr
    for secret in ("hunter2", "abc.def", "deadbeef", "sk_live_x", "never"):
        assert secret not in text
    login, webhook, stdlib = lines
    assert login["password"] == "[redacted]" and login["email"] == "a@example.com"
    assert webhook["payload"]["nested"]["amount"] == "1.5"
    assert stdlib["event"] == "stdlib line" and stdlib["logger"] == "rq.worker"


def test_no_secret_or_card_number_survives_at_any_depth_or_inside_text():
    text = _run(STRUCTURE).stderr
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    for name, secret in SECRETS.items():
        assert secret not in text, f"{name} leaked"
        assert secret.replace(" ", "").replace("-", "") not in text, f"{name} leaked"
    nested, login, moonpay, database, stdlib, failed = lines
    # What is not a secret stays readable: amounts, ids, where a card was (its last four digits).
    assert nested["amount"] == "0.050000000000000000"
    assert nested["wallet_id"] == "3f2a6c1e-1234-4d3b-9abc-0123456789ab"
    assert nested["request"]["body"][0]["user"]["cards"][0] == "[card ****1111]"
    assert moonpay["card"] == "[card ****5559]"
    assert login["event"].startswith("login failed for a@example.com with password=[redacted]")
    assert database["url"] == "postgresql://wallet:[redacted]@db:5432/wallet"
    assert stdlib["event"].startswith("job j1: Authorization: [redacted]")
    assert "ValueError" in failed["exception"] and "token=[redacted]" in failed["exception"]


# --------------------------------------------------------------------------- context in the app


@pytest.fixture
def log_lines(settings):
    """The JSON lines the real logging configuration writes while the test runs (at INFO)."""
    configure_logging(level="INFO", json=True)
    buffer = io.StringIO()
    (handler,) = logging.getLogger().handlers
    handler.setStream(buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    configure_logging(level=settings.log_level, json=settings.log_json)


def _requests(lines):
    return [line for line in lines if line["event"] == "request"]


def _audit(lines, event):
    return [line for line in lines if line.get("channel") == "audit" and line["event"] == event]


def test_a_request_line_carries_the_request_id_user_and_wallet(client, user, auth_headers, crypto_wallet, log_lines):
    wallet_id = crypto_wallet(user, "ETH")
    res = client.get(f"/wallets/{wallet_id}", headers={**auth_headers(user), "X-Request-ID": "req-abc-123"})
    assert res.status_code == 200
    (line,) = _requests(log_lines())
    assert line["request_id"] == "req-abc-123" == res.headers["X-Request-ID"]
    assert line["user_id"] == str(user.id) and line["wallet_id"] == str(wallet_id)
    assert (line["method"], line["path"], line["status"]) == ("GET", f"/wallets/{wallet_id}", 200)


def test_nothing_of_one_request_leaks_into_the_next_on_the_same_thread(client, user, auth_headers, log_lines):
    assert client.get("/wallets", headers=auth_headers(user)).status_code == 200
    assert structlog.contextvars.get_contextvars() == {}
    assert client.get("/wallets").status_code == 401
    first, second = _requests(log_lines())
    assert first["user_id"] == str(user.id)
    assert "user_id" not in second and second["request_id"] != first["request_id"]


def test_a_transfer_and_an_admin_adjustment_each_write_one_audit_line(client, make_user, auth_headers, crypto_wallet,
                                                                      admin, log_lines):
    alice, bob = make_user(), make_user()
    source, destination = crypto_wallet(alice, "USD"), crypto_wallet(bob, "USD")
    funded = client.post(f"/admin/wallets/{source}/credit", json={"amount": "50.00", "reason": "opening balance"},
                         headers=auth_headers(admin))
    assert funded.status_code == 201
    res = client.post("/transfers", json={"from_wallet_id": str(source), "to_wallet_id": str(destination),
                                          "amount": "12.50"}, headers={**auth_headers(alice), "X-Request-ID": "t-1"})
    assert res.status_code == 201, res.get_json()
    lines = log_lines()
    adjustment, transfer = _audit(lines, "money_moved")
    assert transfer == {**transfer, "operation": "transfer", "kind": "transfer", "amount": "12.50", "currency": "USD",
                        "transaction_id": res.get_json()["id"], "from_wallet_id": str(source),
                        "to_wallet_id": str(destination), "actor": str(alice.id), "request_id": "t-1",
                        "user_id": str(alice.id), "logger": "wallet_api.audit", "level": "info"}
    assert adjustment == {**adjustment, "operation": "credit", "kind": "admin_credit", "amount": "50.00",
                          "to_wallet_id": str(source), "from_wallet_id": None, "actor": str(admin.id),
                          "counter_account": "platform_adjustments"}
    (action,) = _audit(lines, "admin_action")
    assert action == {**action, "admin_id": str(admin.id), "target": str(source), "outcome": "succeeded",
                      "status": 201, "method": "POST", "action": "admin.AdminCredit"}


def test_a_refused_admin_action_is_audited_and_moves_nothing(client, user, auth_headers, crypto_wallet, log_lines):
    wallet_id = crypto_wallet(user, "USD")
    res = client.post(f"/admin/wallets/{wallet_id}/credit", json={"amount": "5.00", "reason": "nope"},
                      headers=auth_headers(user))
    assert res.status_code == 403
    lines = log_lines()
    assert _audit(lines, "money_moved") == []
    (action,) = _audit(lines, "admin_action")
    assert (action["admin_id"], action["outcome"], action["status"]) == (str(user.id), "refused", 403)


def test_audit_lines_are_written_whatever_the_log_level(client, auth_headers, admin, user, crypto_wallet, settings,
                                                      log_lines):
    configure_logging(level="ERROR", json=True)
    (handler,) = logging.getLogger().handlers
    buffer = io.StringIO()
    handler.setStream(buffer)
    wallet_id = crypto_wallet(user, "USD")
    assert client.post(f"/admin/wallets/{wallet_id}/credit", json={"amount": "5.00", "reason": "goodwill"},
                       headers=auth_headers(admin)).status_code == 201
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["money_moved", "admin_action"]


def test_the_request_id_follows_a_webhook_into_its_job_on_a_real_worker(client, user, onramp, settings, log_lines,
                                                                       redis_client):
    onramp_id, wallet_id = onramp(user, "ETH")
    res = post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, amount="0.5"),
                       headers={"X-Request-ID": "webhook-req-77"})
    assert res.status_code == 200
    (request_line,) = _requests(log_lines())
    event_id = request_line["provider_event_id"]
    assert request_line["request_id"] == "webhook-req-77" and event_id

    # A job enqueued by no request (as the scheduler does), run by the same worker after the drain.
    Queue(DEFAULT, connection=redis_client).enqueue("worker.jobs.purge_idempotency_keys")

    worker = start_worker_process(settings, LOG_LEVEL="INFO", LOG_JSON="true")
    output = finish(worker)
    assert worker.returncode == 0, output
    job_lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    drain_lines = [line for line in job_lines if line.get("job_name") == "worker.jobs.drain_webhook_events"]
    processed = next(line for line in drain_lines if line["event"] == "webhook_processed")
    assert processed == {**processed, "request_id": "webhook-req-77", "provider_event_id": event_id,
                         "user_id": str(user.id), "outcome": "credited"}
    assert processed["job_id"]
    (credit,) = [line for line in drain_lines if line.get("channel") == "audit"]
    assert credit == {**credit, "event": "money_moved", "operation": "credit", "kind": "onramp_credit",
                      "amount": "0.5", "currency": "ETH", "to_wallet_id": str(wallet_id), "actor": "system",
                      "request_id": "webhook-req-77", "provider_event_id": event_id,
                      "user_id": str(user.id), "job_id": processed["job_id"]}
    # RQ's own line about the job's outcome carries the job's context too.
    assert any(line["logger"].startswith("rq.") and line.get("job_id") == processed["job_id"]
               and line["request_id"] == "webhook-req-77" for line in job_lines)
    # The scheduled job has a request id of its own, and nothing of the drain before it.
    purge = [line for line in job_lines if line.get("job_name") == "worker.jobs.purge_idempotency_keys"]
    assert purge and {line["request_id"] for line in purge} != {"webhook-req-77"}
    assert len({line["request_id"] for line in purge}) == 1
    assert not any("provider_event_id" in line or "user_id" in line for line in purge)
    # Nothing of a job is left on the lines between jobs (RQ's dequeuing, the worker's own).
    between = [line for line in job_lines if "job_id" not in line]
    assert between and not any({"request_id", "provider_event_id", "user_id"} & line.keys() for line in between)


def test_a_job_enqueued_after_a_commit_carries_the_request_id(client, admin, auth_headers, redis_client):
    res = client.post("/admin/jobs/idempotency-purge/run", headers={**auth_headers(admin), "X-Request-ID": "run-9"})
    assert res.status_code == 202, res.get_json()
    (job,) = Queue(DEFAULT, connection=redis_client).jobs
    assert job.meta["request_id"] == "run-9"


def test_a_job_enqueued_by_a_job_names_its_parent_and_starts_a_request_id_of_its_own():
    structlog.contextvars.clear_contextvars()
    try:
        structlog.contextvars.bind_contextvars(request_id="req-1")
        assert with_origin(None) == {"request_id": "req-1"}
        bind_job(SimpleNamespace(id="job-1", func_name="worker.jobs.drain_webhook_events",
                                 meta=with_origin({"other": 1})))
        assert structlog.contextvars.get_contextvars() == {
            "request_id": "req-1", "job_id": "job-1", "job_name": "worker.jobs.drain_webhook_events"}
        continuation = with_origin(None)
        assert continuation == {"parent_job_id": "job-1"}
        bind_job(SimpleNamespace(id="job-2", func_name="worker.jobs.drain_webhook_events", meta=continuation))
        context = structlog.contextvars.get_contextvars()
        assert context["parent_job_id"] == "job-1" and context["request_id"] not in ("req-1", None)
        structlog.contextvars.clear_contextvars()  # the scheduler, a command: nothing to carry
        assert with_origin(None) is None and with_origin({"x": 1}) == {"x": 1}
    finally:
        structlog.contextvars.clear_contextvars()
