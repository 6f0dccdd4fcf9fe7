"""The wallet reconciliation job finds every way the ledger can be wrong on deliberately corrupted data,
flags and alerts once per problem however often it runs, and never corrects anything."""
import uuid
from decimal import Decimal

import pytest

from wallet_api.extensions import db
from wallet_api.reconciliation.wallet_job import run_wallet_reconciliation


@pytest.fixture
def reconcile(app):
    def run(**kwargs):
        with app.app_context():
            try:
                return run_wallet_reconciliation(**kwargs)
            finally:
                db.session.remove()

    return run


@pytest.fixture
def wallet(user, crypto_wallet):
    return crypto_wallet(user, "USDC")


def alerts(books):
    return books.read("SELECT alert_type, severity, subject, occurrences, metadata FROM alert_log ORDER BY subject")


def flagged(books):
    return {r["id"] for r in books.read("SELECT id FROM wallets WHERE needs_reconciliation")}


def test_a_consistent_ledger_raises_nothing(reconcile, wallet, fund, books):
    fund(wallet, "10.00")
    fund(wallet, "2.50")
    counts = reconcile()
    assert counts["balance_mismatches"] == counts["unbalanced_transactions"] == counts["broken_chains"] == 0
    assert counts["wallets_checked"] == 1
    assert alerts(books) == [] and flagged(books) == set()


def test_a_cached_balance_that_differs_from_the_entries_is_flagged_and_alerted_never_corrected(
        reconcile, wallet, fund, corrupt, books):
    fund(wallet, "10.00")
    corrupt("UPDATE wallets SET balance = 12.5 WHERE id = %(w)s", w=str(wallet))
    counts = reconcile()
    assert counts["balance_mismatches"] == 1 and counts["wallets_flagged"] == 1 and counts["alerts_new"] == 1
    (alert,) = alerts(books)
    assert (alert["alert_type"], alert["severity"], alert["subject"]) == \
        ("BALANCE_MISMATCH", "critical", f"wallet:{wallet}")
    meta = alert["metadata"]
    assert (meta["check"], meta["wallet_id"], Decimal(meta["expected"]), Decimal(meta["actual"]),
            Decimal(meta["difference"])) == ("cached_balance", str(wallet), Decimal("10"), Decimal("12.5"),
                                              Decimal("2.5"))
    assert flagged(books) == {wallet}
    assert books.balance(wallet) == Decimal("12.5")  # detect first: nothing was rewritten

    again = reconcile()
    assert again["alerts_new"] == 0 and again["alerts_repeated"] == 1
    assert [a["occurrences"] for a in alerts(books)] == [2]


def test_system_wallets_have_no_cached_balance_and_are_not_reported(reconcile, wallet, fund, books):
    fund(wallet, "7.00")  # the clearing wallet's entries sum to -7.00 while its balance column stays 0
    assert reconcile()["balance_mismatches"] == 0


def test_a_transaction_whose_entries_do_not_sum_to_zero_is_found(reconcile, wallet, fund, corrupt, books):
    result = fund(wallet, "10.00")
    leg = result.leg(wallet)
    corrupt("UPDATE ledger_entries SET amount = 11 WHERE id = %(e)s", e=leg.entry_id)
    corrupt("UPDATE wallets SET balance = 11 WHERE id = %(w)s", w=str(wallet))  # the cache follows the entry
    counts = reconcile()
    assert counts["unbalanced_transactions"] == 1 and counts["balance_mismatches"] == 0
    assert counts["broken_chains"] == 1  # the entry's balance_after (10) no longer follows from its amount
    subjects = {a["subject"]: a for a in alerts(books)}
    tx_alert = subjects[f"transaction:{result.transaction_id}"]
    assert tx_alert["metadata"]["check"] == "unbalanced_transaction" and Decimal(tx_alert["metadata"]["sum"]) == 1
    assert flagged(books) == {wallet}  # the wallet touched by the transaction


def test_a_transaction_with_a_single_entry_or_none_is_found(reconcile, wallet, fund, corrupt, books):
    result = fund(wallet, "10.00")
    system_leg = next(leg for leg in result.entries if leg.wallet_id != wallet)
    corrupt("DELETE FROM ledger_entries WHERE id = %(e)s", e=system_leg.entry_id)
    orphan = uuid.uuid4()
    corrupt("INSERT INTO ledger_transactions (id, kind, currency, amount, idempotency_key) "
            "VALUES (%(t)s, 'deposit', 'USDC', 1, %(k)s)", t=str(orphan), k=f"test:{orphan}")
    assert reconcile()["unbalanced_transactions"] == 2
    legs = {a["subject"]: a["metadata"]["legs"] for a in alerts(books)}
    assert legs == {f"transaction:{result.transaction_id}": 1, f"transaction:{orphan}": 0}


def test_a_broken_balance_after_chain_is_found_at_its_first_break(reconcile, wallet, fund, corrupt, books):
    fund(wallet, "10.00")
    second = fund(wallet, "5.00").leg(wallet)
    fund(wallet, "1.00")
    corrupt("UPDATE ledger_entries SET balance_after = 14 WHERE id = %(e)s", e=second.entry_id)
    counts = reconcile()
    assert (counts["broken_chains"], counts["balance_mismatches"], counts["unbalanced_transactions"]) == (1, 0, 0)
    (alert,) = alerts(books)
    assert alert["subject"] == f"chain:{wallet}"
    # Both the corrupted entry and the next one no longer follow: reported once, at the first break.
    assert alert["metadata"]["first_broken_entry_id"] == second.entry_id and alert["metadata"]["broken_entries"] == 2
    assert flagged(books) == {wallet}


def test_a_chain_break_answered_by_a_cache_correction_is_not_reported_again(app, reconcile, wallet, fund, corrupt,
                                                                           books):
    from wallet_api.wallets import ledger

    fund(wallet, "10.00")
    corrupt("UPDATE wallets SET balance = 20 WHERE id = %(w)s", w=str(wallet))
    fund(wallet, "1.00")  # written from the wrong cache: balance_after 21 instead of 11
    with app.app_context():
        ledger.rewrite_cached_balance(wallet_id=wallet, corrected_by="test", reason="test")
        db.session.remove()
    fund(wallet, "1.00")  # written from the corrected cache: 12
    counts = reconcile()
    assert (counts["balance_mismatches"], counts["broken_chains"]) == (0, 0)


def test_whole_ledger_reads_get_their_own_statement_timeout_for_their_transaction_only(make_settings_app):
    from sqlalchemy import text

    from wallet_api.reconciliation import ledger_checks

    app = make_settings_app(statement_timeout_ms=1500, reconciliation_statement_timeout_ms=600_000)
    with app.app_context():
        assert db.session.execute(text("SHOW statement_timeout")).scalar() == "1500ms"
        ledger_checks.for_long_reads(statement_timeout_ms=600_000)
        assert db.session.execute(text("SHOW statement_timeout")).scalar() == "10min"
        db.session.commit()
        assert db.session.execute(text("SHOW statement_timeout")).scalar() == "1500ms"
        db.session.remove()


def test_admins_list_the_wallets_flagged_for_reconciliation(app, reconcile, client, admin, auth_headers, make_user,
                                                            crypto_wallet, fund, corrupt):
    good = crypto_wallet(make_user(), "BTC")
    bad = crypto_wallet(make_user(), "BTC")
    fund(good, "1.00")
    fund(bad, "1.00")
    corrupt("UPDATE wallets SET balance = 3 WHERE id = %(w)s", w=str(bad))
    reconcile()
    headers = auth_headers(admin)
    items = client.get("/admin/wallets?needs_reconciliation=true", headers=headers).get_json()["items"]
    assert [(i["id"], i["balance"], i["needs_reconciliation"]) for i in items] == [(str(bad), "3.00000000", True)]
    unflagged = client.get("/admin/wallets?needs_reconciliation=false", headers=headers).get_json()["items"]
    assert [i["id"] for i in unflagged] == [str(good)]
    assert len(client.get("/admin/wallets?limit=1", headers=headers).get_json()["items"]) == 1


# --------------------------------------------------------------------------- credit spikes


@pytest.fixture
def completed_purchase(onramp, fund, corrupt):
    """completed_purchase(user, "400.00", minutes_ago=5): an on-ramp purchase that was paid and credited."""

    def make(user, paid: str, *, minutes_ago: int = 5, currency: str = "USD", crypto: str = "ETH"):
        onramp_id, wallet_id = onramp(user, crypto, base_amount="10.00")
        credit = fund(wallet_id, "0.01", kind="onramp_credit", reference=f"moonpay:mp_{onramp_id}")
        corrupt("UPDATE onramp_transactions SET status = 'completed', ledger_transaction_id = %(t)s, "
                "moonpay_transaction_id = %(m)s, quote_currency_amount = 0.01, base_currency = %(c)s, "
                "provider_base_amount = %(paid)s, completed_at = now() - make_interval(mins => %(ago)s) "
                "WHERE id = %(o)s", t=str(credit.transaction_id), m=f"mp_{onramp_id}", c=currency, paid=paid,
                ago=minutes_ago, o=str(onramp_id))
        return onramp_id

    return make


def spikes(books):
    return {a["subject"]: a for a in alerts(books) if a["alert_type"] == "CREDIT_SPIKE"}


def test_platform_credit_volume_at_the_threshold_is_quiet_and_above_it_alerts(reconcile, make_user,
                                                                             completed_purchase, books):
    # Threshold 1000 platform-wide, 500 per user, per fiat currency, over the last 60 minutes.
    for _ in range(2):
        completed_purchase(make_user(), "400.00")
    completed_purchase(make_user(), "200.00")
    completed_purchase(make_user(), "999.00", minutes_ago=61)  # outside the window
    completed_purchase(make_user(), "450.00", currency="EUR")  # another currency: not added to USD
    assert reconcile()["credit_spikes"] == 0  # exactly 1000.00 USD: at the threshold, not above it
    completed_purchase(make_user(), "0.01")
    assert reconcile()["credit_spikes"] == 1
    (spike,) = spikes(books).values()
    assert spike["subject"] == "platform:USD" and spike["severity"] == "medium"
    meta = spike["metadata"]
    assert (Decimal(meta["amount"]), Decimal(meta["threshold"]), meta["purchases"], meta["scope"]) == \
        (Decimal("1000.01"), Decimal("1000"), 4, "platform")
    assert meta["period"]["window_minutes"] == 60


def test_one_user_above_the_per_user_threshold_alerts_for_that_user(reconcile, make_user, completed_purchase, books):
    buyer = make_user()
    completed_purchase(buyer, "250.00", crypto="ETH")
    completed_purchase(buyer, "250.00", crypto="BTC")
    assert reconcile()["credit_spikes"] == 0  # 500.00: at the per-user threshold
    completed_purchase(buyer, "0.01", crypto="SOL")
    reconcile()
    assert set(spikes(books)) == {f"user:{buyer.id}:USD"}


def test_an_applied_credit_checks_for_a_spike_at_once(app, client, user, onramp, run_jobs, books):
    from tests.onramp.support import Num, moonpay_event, post_webhook

    onramp_id, _ = onramp(user, "ETH", base_amount="600.00")
    post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, baseCurrencyAmount=Num("600.00")))
    run_jobs()
    assert set(spikes(books)) == {f"user:{user.id}:USD"}
    assert Decimal(books.onramp(onramp_id)["provider_base_amount"]) == Decimal("600.00")


def test_credits_check_the_platform_window_at_most_once_per_interval(
        app, client, make_user, onramp, run_jobs, books, redis_client):
    from tests.onramp.support import Num, moonpay_event, post_webhook
    from wallet_api.onramp.apply_job import PLATFORM_CHECKED
    from wallet_api.onramp.credit_spike import PLATFORM_CHECK_EVERY_SECONDS

    def buy(amount):
        buyer = make_user()
        onramp_id, _ = onramp(buyer, "ETH", base_amount=amount)
        post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=buyer.id, moonpay_id=f"mp_{onramp_id}",
                                           baseCurrencyAmount=Num(amount)))
        run_jobs()
        assert books.onramp(onramp_id)["status"] == "completed"

    buy("400.00")  # checks the platform (400 of 1000) and starts the interval
    assert 0 < redis_client.ttl(PLATFORM_CHECKED) <= PLATFORM_CHECK_EVERY_SECONDS
    buy("400.00")
    buy("400.00")  # 1200 platform-wide, but the platform was checked moments ago
    assert "platform:USD" not in spikes(books)
    redis_client.delete(PLATFORM_CHECKED)  # the interval has passed
    buy("10.00")
    assert "platform:USD" in spikes(books)


def test_the_threshold_settings_are_read_from_the_environment():
    from tests.conftest import TEST_JWT_SECRET, TEST_REFRESH_SECRET
    from wallet_api.config import ConfigError, load_settings

    base = {"APP_ENV": "test", "DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x",
            "JWT_SECRET": TEST_JWT_SECRET, "JWT_REFRESH_SECRET": TEST_REFRESH_SECRET,
            "MOONPAY_WEBHOOK_SECRET": "w", "MOONPAY_SECRET_KEY": "k"}
    settings = load_settings({**base, "ALERT_CREDIT_SPIKE_THRESHOLD": "2500.50",
                              "ALERT_CREDIT_SPIKE_USER_THRESHOLD": "100", "ALERT_CREDIT_SPIKE_WINDOW_MINUTES": "30"})
    assert (settings.alert_credit_spike_threshold, settings.alert_credit_spike_user_threshold,
            settings.alert_credit_spike_window_minutes) == (Decimal("2500.50"), Decimal("100"), 30)
    with pytest.raises(ConfigError) as error:
        load_settings({**base, "ALERT_CREDIT_SPIKE_THRESHOLD": "-1", "ALERT_CREDIT_SPIKE_USER_THRESHOLD": "lots"})
    assert set(error.value.problems) == {"ALERT_CREDIT_SPIKE_THRESHOLD", "ALERT_CREDIT_SPIKE_USER_THRESHOLD"}


def test_the_job_runs_through_a_worker_and_records_its_counts(app, wallet, fund, corrupt, run_jobs, redis_client, books):
    from rq import Queue

    fund(wallet, "3.00")
    corrupt("UPDATE wallets SET balance = 4 WHERE id = %(w)s", w=str(wallet))
    Queue("default", connection=redis_client).enqueue("worker.jobs.wallet_reconciliation")
    run_jobs()
    (run,) = books.read("SELECT status, trigger, counts FROM job_runs")
    assert (run["status"], run["trigger"]) == ("succeeded", "scheduled")
    assert run["counts"]["balance_mismatches"] == 1 and run["counts"]["wallets_flagged"] == 1
    assert [a["subject"] for a in alerts(books)] == [f"wallet:{wallet}"]
