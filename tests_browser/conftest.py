"""Browser tests of the operator console: the real app served by gunicorn on a loopback port, as in
production, driven through Debian's chromium by Playwright (never `playwright install`).

Run by bin/test-browser; bin/test does not collect this directory. The database, Redis and the
factories are the ones of tests/conftest.py; jobs run in an in-process RQ SimpleWorker against the
same Redis the server enqueues to. Screenshots of each page, at a laptop's and a phone's width,
are written to docs/console/.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import *  # noqa: F401,F403 - the database, Redis and the factories
from tests.conftest import (FACTORY_PASSWORD, _cheap_password_hash, _clean_state,  # noqa: F401
                            _limiter_as_the_default_app_configures_it)
from tests.onramp.support import ROOT, crypto_wallet, onramp, run_jobs, worker_env  # noqa: F401
from tests.reconciliation.conftest import corrupt  # noqa: F401

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = ROOT / "docs" / "console"
SERVER_START_TIMEOUT = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(app, settings, tmp_path_factory):
    """The app under gunicorn (2 workers: both must accept the same session cookie), rate limits on."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("gunicorn") / "web.log"
    env = worker_env(settings, RATELIMIT_ENABLED="true", WEB_CONCURRENCY="2", GUNICORN_THREADS="4",
                     DB_POOL_SIZE="4", DB_MAX_OVERFLOW="2", PORT=str(port))
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield base_url
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def browser():
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh browser profile (no cookies) on the console; fails the test on any console error
    (a Content-Security-Policy violation included)."""
    context = browser.new_context(base_url=server, viewport=LAPTOP)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors = []

    def on_console(message):
        # A page answered 401/403/422 on purpose is logged as a failed load; sub-resources are checked below.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    def on_response(response):
        if response.request.resource_type != "document" and response.status >= 400:
            errors.append(f"{response.status} for {response.url}")

    page.on("console", on_console)
    page.on("response", on_response)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"the browser reported errors: {errors}"


@pytest.fixture
def shoot():
    """shoot(page, name): full-page screenshots at a laptop's and a phone's width, into docs/console/.

    At both widths the page itself must not scroll sideways (wide tables scroll inside their box)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> None:
        for label, size in (("laptop", LAPTOP), ("phone", PHONE)):
            page.set_viewport_size(size)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{name} scrolls sideways by {overflow}px at {label} width"
            page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}.png"), full_page=True)
        page.set_viewport_size(LAPTOP)

    return take


@pytest.fixture
def sign_in():
    """sign_in(page, user): through the login form, as an operator would."""

    def run(page, user, password: str = FACTORY_PASSWORD) -> None:
        if "/console/login" not in page.url:
            page.goto("/console/login")
        page.get_by_label("Email").fill(user.email)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()

    return run

