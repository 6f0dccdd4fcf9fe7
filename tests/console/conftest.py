"""Fixtures of the console tests: signing in through the login form, CSRF tokens read off pages."""
from __future__ import annotations

import re
import uuid

import pytest

from tests.conftest import FACTORY_PASSWORD
from tests.onramp.support import crypto_wallet, onramp, park_event, post_webhook, run_jobs, utc  # noqa: F401
from tests.reconciliation.conftest import corrupt  # noqa: F401
from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import raise_alert
from wallet_api.extensions import db

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client, path: str = "/console/login") -> str:
    """The CSRF token of the form on `path` (for this client's session)."""
    page = client.get(path)
    match = CSRF_FIELD.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path} ({page.status_code})"
    return match.group(1)


def sign_in(client, user, *, password: str = FACTORY_PASSWORD, next_path: str | None = None):
    """POST the login form as a browser would (token from the login page); returns the response."""
    form = {"email": user.email, "password": password, "csrf_token": csrf_token(client)}
    if next_path:
        form["next"] = next_path
    return client.post("/console/login", data=form)


def post_form(client, path: str, data: dict | None = None, *, token_from: str = "/console/"):
    """POST a console form with a valid CSRF token (read off `token_from`)."""
    return client.post(path, data={**(data or {}), "csrf_token": csrf_token(client, token_from)})


@pytest.fixture
def operator(client, admin):
    """The test client signed in as an ADMIN."""
    res = sign_in(client, admin)
    assert res.status_code == 303, res.get_data(as_text=True)
    return client


@pytest.fixture
def access_records(books):
    def read(action_prefix: str = "console."):
        return books.read("SELECT * FROM admin_access_log WHERE action LIKE :p ORDER BY created_at, id",
                          p=action_prefix + "%")

    return read


@pytest.fixture
def park(app, client):
    """park(payload) -> (dlq entry id, event id): deliver a webhook, then fail every retry until dead-lettered."""
    return lambda payload: park_event(app, client, payload, at=utc(2026, 11, 28, 12, 0))


@pytest.fixture
def alert_id(app):
    """An open BALANCE_MISMATCH alert about a made-up wallet."""
    with app.app_context():
        found = raise_alert(alert_type=AlertType.BALANCE_MISMATCH, subject=f"wallet:{uuid.uuid4()}",
                            title="cached balance differs", message="the cache says more than the ledger",
                            metadata={"check": "cached_balance", "expected": "1.00", "actual": "2.00"})
        db.session.commit()
        db.session.remove()
    return found
