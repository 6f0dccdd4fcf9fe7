"""An operator's day in the console, in a real browser against the real app: sign in, find the
wallet whose cached balance was corrupted through the alert the reconciliation raised, resolve it
with a note, replay a dead-lettered purchase and see it credited, run a job and see its run; and a
USER is refused."""
from __future__ import annotations

import datetime as dt
import re

import psycopg2
import pytest
from playwright.sync_api import expect

from tests.onramp.support import moonpay_event, post_webhook, utc
from wallet_api.extensions import db
from wallet_api.onramp.apply_job import process_event

T0 = utc(2026, 11, 28, 12, 0)


def nav(page, section: str) -> None:
    page.get_by_role("navigation", name="Sections").get_by_role("link", name=section, exact=True).click()


@pytest.fixture
def ops(make_user):
    return make_user(email="ops@example.com", role="ADMIN")


@pytest.fixture
def alice(make_user):
    return make_user(email="alice@example.com")


def test_an_operator_finds_a_corrupted_balance_resolves_its_alert_and_signs_out(
        page, shoot, sign_in, ops, alice, funded_wallet, corrupt, run_jobs):
    wallet = funded_wallet("250.00", user=alice)
    corrupt("UPDATE wallets SET balance = balance + 10 WHERE id = %(w)s", w=str(wallet))

    page.goto("/console/")
    expect(page).to_have_url(re.compile(r"/console/login\?next=/console/"))
    shoot(page, "login")
    sign_in(page, ops)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    # Run the wallet reconciliation now, and let a worker take it.
    nav(page, "Jobs")
    page.get_by_role("button", name="Run wallet-reconciliation now").click()
    expect(page.get_by_role("status")).to_contain_text("is queued")
    assert run_jobs()
    page.reload()
    runs = page.locator("table tbody tr")
    expect(runs.first).to_contain_text("succeeded")
    expect(runs.first).to_contain_text("balance_mismatches 1")
    expect(runs.first).to_contain_text(ops.email)
    shoot(page, "job")
    nav(page, "Jobs")
    shoot(page, "jobs")

    nav(page, "Overview")
    expect(page.get_by_test_id("alerts-critical")).to_have_text("1")
    expect(page.get_by_test_id("flagged-wallets")).to_have_text("1")
    shoot(page, "overview")

    page.get_by_role("link", name=re.compile("critical alerts")).click()
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody")).to_contain_text("BALANCE_MISMATCH")
    shoot(page, "alerts")
    page.locator("tbody tr a").first.click()
    meta = page.locator("table.meta")
    expect(meta).to_contain_text("250.00")
    expect(meta).to_contain_text("260.00")
    shoot(page, "alert")

    # The alert links to the wallet: cached 260.00, ledger 250.00, the difference shown exactly.
    meta.get_by_role("link", name=str(wallet)).click()
    expect(page.get_by_test_id("balance")).to_have_text("260.00 USD")
    expect(page.locator(".facts")).to_contain_text("difference 10.00")
    expect(page.locator("tbody tr")).to_have_count(1)
    shoot(page, "wallet")
    page.go_back()

    # The note is required: the browser will not send an empty form.
    page.get_by_role("button", name="Resolve alert").click()
    expect(page.get_by_role("heading", name="Resolution")).to_have_count(0)
    page.get_by_label("Note").fill("Cached balance written around the ledger; rewrote it with reconcile-balance --fix.")
    page.get_by_role("button", name="Resolve alert").click()
    expect(page.get_by_role("status")).to_have_text("Alert resolved.")
    expect(page.locator(".facts").last).to_contain_text(ops.email)
    expect(page.locator(".facts").last).to_contain_text("reconcile-balance --fix")

    nav(page, "Access log")
    page.get_by_label("Action").fill("console.resolve_alert")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(ops.email)
    expect(rows.first).to_contain_text("303")
    page.get_by_label("Action").fill("")
    page.get_by_role("button", name="Filter").click()
    shoot(page, "access-log")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_have_text("Signed out.")
    page.goto("/console/alerts")
    expect(page).to_have_url(re.compile(r"/console/login"))


@pytest.fixture
def parked_purchase(app, client, services, alice, onramp, books):
    """A completed purchase whose on-ramp row was missing while its webhook was processed: every
    retry failed and it sits in the DLQ; the row is back now (the operator's fix)."""
    onramp_id, wallet_id = onramp(alice, "ETH")
    conn = psycopg2.connect(services.owner_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT * FROM onramp_transactions WHERE id = %s", (str(onramp_id),))
            columns = [c.name for c in cur.description]
            row = cur.fetchone()
            cur.execute("DELETE FROM onramp_transactions WHERE id = %s", (str(onramp_id),))
        post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=alice.id, moonpay_id="mp_tx_browser"))
        event_id = books.events()[-1]["id"]
        with app.app_context():
            at = T0
            while process_event(event_id=event_id, now=at) != "dead_lettered":
                at += dt.timedelta(hours=2)
            db.session.remove()
        with conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO onramp_transactions ({', '.join(columns)}) "
                        f"VALUES ({', '.join(['%s'] * len(columns))})", row)
    finally:
        conn.close()
    return wallet_id


def test_an_operator_replays_a_dead_letter_and_sees_the_purchase_credited(
        page, shoot, sign_in, ops, alice, parked_purchase, run_jobs):
    page.goto("/console/login")
    sign_in(page, ops)
    expect(page.get_by_test_id("dlq-size")).to_have_text("1")
    expect(page.get_by_test_id("alerts-high")).to_have_text("1")

    nav(page, "Dead letters")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody")).to_contain_text("unknown on-ramp transaction")
    shoot(page, "dlq")
    page.locator("tbody tr a").first.click()
    expect(page.locator("pre.payload")).to_contain_text('"quoteCurrencyAmount": 0.05')
    shoot(page, "dlq-entry")

    page.get_by_role("radio", name=re.compile("Replay")).check()
    page.get_by_label("Note").fill("Restored the on-ramp row from the backup; replaying.")
    page.get_by_role("button", name="Resolve entry").click()
    expect(page.get_by_role("status")).to_contain_text("Replayed")
    expect(page.locator(".facts")).to_contain_text("replay")
    assert run_jobs()

    nav(page, "Wallets")
    page.get_by_label("Wallet id or owner email").fill(alice.email)
    page.get_by_role("button", name="Find").click()
    found = page.locator("table").first.locator("tbody tr")
    expect(found).to_have_count(1)
    expect(found.first).to_contain_text("0.050000000000000000")
    shoot(page, "wallets")
    found.first.get_by_role("link", name="ETH").click()
    expect(page.get_by_test_id("balance")).to_have_text("0.050000000000000000 ETH")
    expect(page.locator("tbody tr").first).to_contain_text("onramp_credit")


def test_a_user_is_refused_and_a_visitor_without_a_session_is_sent_to_sign_in(page, shoot, sign_in, alice):
    page.goto("/console/dlq")
    expect(page).to_have_url(re.compile(r"/console/login\?next=/console/dlq"))
    sign_in(page, alice)
    expect(page.get_by_role("heading", name="403")).to_be_visible()
    shoot(page, "forbidden")
    page.goto("/console/dlq")
    expect(page).to_have_url(re.compile(r"/console/login"))
    assert not [c for c in page.context.cookies() if c["name"] == "wallet_console" and "operator" in c["value"]]


def test_a_wrong_password_is_refused_without_saying_which_part_was_wrong(page, sign_in, ops):
    page.goto("/console/login")
    sign_in(page, ops, password="not the password")
    expect(page.get_by_role("alert")).to_have_text("Invalid email or password.")
    expect(page.get_by_label("Email")).to_have_value(ops.email)
    expect(page.get_by_label("Password")).to_have_value("")
