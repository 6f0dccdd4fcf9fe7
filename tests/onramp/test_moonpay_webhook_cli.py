"""`flask moonpay-webhook`: a newcomer's one command from an on-ramp session to a credited wallet,
posted over real HTTP to the running app; refused in production."""
import secrets
import subprocess
import threading
from decimal import Decimal

import pytest
from werkzeug.serving import make_server

from tests.onramp.support import ROOT, VENV_BIN, finish, worker_env

# What bin/flask runs once it has loaded .env: called directly, so a developer's .env (or a running
# bin/dev's servers) can never point this test at another database.
FLASK = [str(VENV_BIN / "flask"), "--app", "wsgi"]


@pytest.fixture
def running_app(app):
    """The app served over HTTP on a loopback port, as `bin/dev` serves it."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_the_command_delivers_a_signed_completion_that_the_worker_credits(app, running_app, user, onramp, books,
                                                                          run_jobs):
    onramp_id, wallet_id = onramp(user, "ETH")
    result = app.test_cli_runner().invoke(args=["moonpay-webhook", str(onramp_id), "--amount", "0.0425",
                                                "--url", running_app])
    assert result.exit_code == 0, result.output
    assert "-> 200" in result.output
    (event,) = books.events()
    assert (event["external_status"], event["event_type"]) == ("completed", "transaction_updated")
    run_jobs()
    assert books.balance(wallet_id) == Decimal("0.0425")
    assert books.onramp(onramp_id)["status"] == "completed"


def test_a_failed_purchase_can_be_played_too(app, running_app, user, onramp, books, run_jobs):
    onramp_id, wallet_id = onramp(user, "BTC")
    result = app.test_cli_runner().invoke(args=["moonpay-webhook", str(onramp_id), "--status", "failed",
                                                "--url", running_app])
    assert result.exit_code == 0, result.output
    run_jobs()
    assert books.onramp(onramp_id)["status"] == "failed" and books.credits(wallet_id) == 0


def test_unknown_sessions_and_an_unreachable_app_are_reported(app, user, onramp):
    import uuid

    runner = app.test_cli_runner()
    unknown = runner.invoke(args=["moonpay-webhook", str(uuid.uuid4()), "--url", "http://127.0.0.1:1"])
    assert unknown.exit_code == 2 and "no on-ramp session" in unknown.output
    onramp_id, _ = onramp(user, "ETH")
    down = runner.invoke(args=["moonpay-webhook", str(onramp_id), "--url", "http://127.0.0.1:1"])
    assert down.exit_code == 1 and "could not reach the app" in down.output


def test_the_command_is_refused_in_production(make_settings_app, user, onramp):
    production = make_settings_app(app_env="production", cors_allowed_origins=("https://app.example.com",))
    onramp_id, _ = onramp(user, "ETH")
    result = production.test_cli_runner().invoke(args=["moonpay-webhook", str(onramp_id)])
    assert result.exit_code == 2 and "refused in production" in result.output


@pytest.mark.slow
def test_from_outside_the_command_and_a_worker_process_credit_the_wallet(app, running_app, settings, user, onramp,
                                                                        books):
    """As the README walk-through runs it, less gunicorn (tests/app/test_web_process.py covers bin/start-web):
    the command as its own process (`bin/flask moonpay-webhook`), then a worker process applies it."""
    onramp_id, wallet_id = onramp(user, "ETH")
    env = worker_env(settings)
    sent = subprocess.run([*FLASK, "moonpay-webhook", str(onramp_id), "--amount", "0.0425", "--url", running_app],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert f"POST {running_app}/webhooks/moonpay -> 200" in sent.stdout
    worker = subprocess.Popen([str(ROOT / "bin" / "start-worker"), "--burst"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = finish(worker)
    assert worker.returncode == 0, output
    assert books.balance(wallet_id) == Decimal("0.0425")
    assert books.credits(wallet_id) == 1
    assert books.onramp(onramp_id)["status"] == "completed"


def test_from_outside_the_command_is_refused_in_production(settings, user, onramp):
    onramp_id, _ = onramp(user, "ETH")
    # A production environment the app accepts, so the refusal is the command's own, not the config's.
    env = worker_env(settings, APP_ENV="production", DATABASE_TLS_REQUIRED="false",
                     JWT_SECRET=secrets.token_urlsafe(48), JWT_REFRESH_SECRET=secrets.token_urlsafe(48),
                     MOONPAY_WEBHOOK_SECRET="wk_" + secrets.token_hex(16),
                     MOONPAY_SECRET_KEY="sk_" + secrets.token_hex(16), CORS_ALLOWED_ORIGINS="https://app.example.com",
                     WEBHOOK_ALLOWED_IPS="10.0.0.1")
    refused = subprocess.run([*FLASK, "moonpay-webhook", str(onramp_id), "--url", "http://127.0.0.1:1"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "refused in production" in refused.stderr
