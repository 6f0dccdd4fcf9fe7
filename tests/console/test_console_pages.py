"""Each console page renders the platform's real data: what the overview adds up, the filters and
cursors of the lists, amounts written exactly as the API writes them, and nothing unescaped."""
import re
import uuid

import pytest
from rq import Queue
from sqlalchemy import select

from tests.onramp.support import moonpay_event
from wallet_api.alerts.models import AlertType
from wallet_api.alerts.service import raise_alert
from wallet_api.extensions import db
from wallet_api.jobs.runner import run_job
from wallet_api.wallets.models import Wallet


def text(res) -> str:
    return res.get_data(as_text=True)


def by_testid(res, name: str) -> str:
    match = re.search(rf'data-testid="{name}">([^<]*)<', text(res))
    assert match, f"no {name} on the page"
    return match.group(1).strip()


def table_of(res) -> str:
    """The rows of the page's (first) table body."""
    match = re.search(r"<tbody>(.*?)</tbody>", text(res), re.S)
    return match.group(1) if match else ""


def raise_one(app, alert_type=AlertType.JOB_CRASH, subject=None, **fields):
    with app.app_context():
        found = raise_alert(alert_type=alert_type, subject=subject or f"job:{uuid.uuid4().hex[:8]}",
                            title=fields.pop("title", "a title"), message=fields.pop("message", "a message"),
                            metadata=fields.pop("metadata", {}))
        db.session.commit()
        db.session.remove()
    return found


def test_the_overview_adds_up_readiness_alerts_dlq_flagged_wallets_queues_and_jobs(
        app, operator, user, park, funded_wallet, corrupt, redis_client):
    raise_one(app)  # JOB_CRASH: critical
    park(moonpay_event(onramp_id=uuid.uuid4(), user_id=user.id))  # a DLQ entry and a WEBHOOK_FAILURE (high)
    wallet = funded_wallet("5.00")
    corrupt("UPDATE wallets SET needs_reconciliation = true WHERE id = %(w)s", w=str(wallet))
    with app.app_context():
        run_job("webhook-retry", lambda: {"retried": 2})
        db.session.remove()
    Queue("default", connection=redis_client).enqueue("worker.jobs.webhook_retry")

    res = operator.get("/console/")
    assert res.status_code == 200
    assert (by_testid(res, "alerts-critical"), by_testid(res, "alerts-high"), by_testid(res, "alerts-medium")) == \
        ("1", "1", "0")
    assert by_testid(res, "dlq-size") == "1" and by_testid(res, "flagged-wallets") == "1"
    body = text(res)
    for check in ("database", "migrations", "redis", "secrets", "database_privileges"):
        assert f"<td>{check}</td>" in body
    assert re.search(r"<td>default</td><td class=\"num\">1</td>", body)  # one job waiting
    assert re.search(r"webhook-retry</a>.*?succeeded", body, re.S)


def test_alerts_are_listed_by_type_and_severity_with_a_cursor(app, operator):
    ids = [raise_one(app, title=f"crash {i}") for i in range(3)]
    raise_one(app, AlertType.CREDIT_SPIKE, subject="platform:USD", title="spike")
    body = text(operator.get("/console/alerts?alertType=JOB_CRASH&limit=2"))
    assert "crash 2" in body and "crash 1" in body and "crash 0" not in body and "spike" not in body
    next_link = re.search(r'href="([^"]+)" rel="next"', body).group(1).replace("&amp;", "&")
    assert "alertType=JOB_CRASH" in next_link
    rest = text(operator.get(next_link))
    assert "crash 0" in rest and "crash 1" not in rest and 'rel="next"' not in rest
    medium = text(operator.get("/console/alerts?severity=medium"))
    assert "spike" in medium and "crash" not in medium
    assert str(ids[0]) in rest


def test_an_unknown_filter_value_is_explained_not_crashed_on(operator):
    res = operator.get("/console/alerts?severity=apocalyptic")
    assert res.status_code == 422 and "Must be one of" in text(res)


def test_an_alert_shows_its_metadata_with_links_and_nothing_unescaped(app, operator):
    wallet_id = uuid.uuid4()
    alert = raise_one(app, AlertType.BALANCE_MISMATCH, subject=f"wallet:{wallet_id}",
                      title="<script>alert('x')</script>",
                      metadata={"check": "cached_balance", "wallet_id": str(wallet_id), "expected": "1.50",
                                "period": {"start": "a", "end": "b"}, "note": "<b>bold</b>"})
    body = text(operator.get(f"/console/alerts/{alert}"))
    assert "<script>alert" not in body and "&lt;script&gt;alert(" in body
    assert "<b>bold</b>" not in body and "&lt;b&gt;bold&lt;/b&gt;" in body
    assert f'href="/console/wallets/{wallet_id}"' in body and "1.50" in body
    assert "docs/RECONCILIATION.md, BALANCE_MISMATCH" in body
    assert operator.get(f"/console/alerts/{uuid.uuid4()}").status_code == 404


def test_the_dlq_lists_entries_and_shows_the_payload_as_received(operator, park, user):
    entry, _ = park(moonpay_event(onramp_id=uuid.uuid4(), user_id=user.id, moonpay_id="mp_waiting",
                                  amount="0.123456789012345678"))
    listing = text(operator.get("/console/dlq"))
    assert "mp_waiting" in listing and "unknown on-ramp transaction" in listing
    detail = text(operator.get(f"/console/dlq/{entry}"))
    assert '&#34;quoteCurrencyAmount&#34;: 0.123456789012345678' in detail  # every digit, no float on the way
    assert "Resolve entry" in detail
    assert "mp_waiting" not in text(operator.get("/console/dlq?status=resolved"))
    assert operator.get(f"/console/dlq/{uuid.uuid4()}").status_code == 404


def test_a_wallet_is_found_by_id_or_by_its_owner_email(operator, make_user, funded_wallet):
    owner = make_user(email="carol@example.com")
    usd, eth = funded_wallet("12.50", user=owner), funded_wallet("0.000000000000000001", user=owner, currency="ETH")
    by_id = operator.get(f"/console/wallets?q={usd}")
    assert by_id.status_code == 302 and by_id.headers["Location"] == f"/console/wallets/{usd}"
    by_email = text(operator.get("/console/wallets?q=Carol@Example.com"))
    assert str(usd) in by_email and str(eth) in by_email and "0.000000000000000001" in by_email
    unknown = operator.get("/console/wallets?q=nobody@example.com")
    assert unknown.status_code == 404 and "No user has this email address." in text(unknown)
    assert operator.get(f"/console/wallets?q={uuid.uuid4()}").status_code == 404


def test_the_wallet_list_filters_flagged_wallets(operator, funded_wallet, corrupt):
    flagged, fine = funded_wallet("1.00"), funded_wallet("2.00")
    corrupt("UPDATE wallets SET needs_reconciliation = true WHERE id = %(w)s", w=str(flagged))
    body = text(operator.get("/console/wallets?needs_reconciliation=true"))
    assert str(flagged) in body and str(fine) not in body
    everything = text(operator.get("/console/wallets"))
    assert str(flagged) in everything and str(fine) in everything


@pytest.mark.parametrize("currency, amount", [("USD", "1234.50"), ("ETH", "0.050000000000000001"), ("BTC", "2")])
def test_balances_are_written_exactly_as_the_api_writes_them(operator, client, admin, auth_headers, funded_wallet,
                                                             currency, amount):
    wallet = funded_wallet(amount, currency=currency)
    api = client.get("/admin/wallets", headers=auth_headers(admin)).get_json()["items"][0]["balance"]
    page = operator.get(f"/console/wallets/{wallet}")
    assert by_testid(page, "balance") == f"{api} {currency}"


def test_a_wallet_page_pages_its_ledger_with_the_cursor(operator, make_wallet, fund):
    wallet = make_wallet()
    for i in range(25):
        fund(wallet, "1.00", reference=f"deposit-{i:02d}")
    first = operator.get(f"/console/wallets/{wallet}")
    body = text(first)
    seen = re.findall(r"deposit-\d\d", body)
    assert len(seen) == 20 and seen[0] == "deposit-24"
    assert by_testid(first, "balance") == "25.00 USD" and "the cached balance equals the sum" in body
    older = re.search(r'href="([^"]+)" rel="next"', body).group(1).replace("&amp;", "&")
    rest = re.findall(r"deposit-\d\d", text(operator.get(older)))
    assert rest == [f"deposit-{i:02d}" for i in range(4, -1, -1)]
    assert operator.get(f"/console/wallets/{wallet}?cursor=garbage").status_code == 422


def test_a_corrupted_wallet_shows_cache_ledger_and_difference(operator, funded_wallet, corrupt):
    wallet = funded_wallet("10.00")
    corrupt("UPDATE wallets SET balance = 7.5 WHERE id = %(w)s", w=str(wallet))
    body = text(operator.get(f"/console/wallets/{wallet}"))
    assert "mismatch" in body and "7.50" in body and "10.00" in body and "-2.50" in body


def test_system_and_unknown_wallets_are_not_found(app, operator):
    with app.app_context():
        system = db.session.scalar(select(Wallet.id).where(Wallet.system_account.is_not(None)).limit(1))
        db.session.remove()
    assert operator.get(f"/console/wallets/{system}").status_code == 404
    assert operator.get(f"/console/wallets/{uuid.uuid4()}").status_code == 404


def test_jobs_show_their_runs_with_counts_and_errors(app, operator, admin):
    with app.app_context():
        run_job("wallet-reconciliation", lambda: {"wallets_checked": 7, "balance_mismatches": 0})
        with pytest.raises(RuntimeError):
            run_job("provider-reconciliation", lambda: (_ for _ in ()).throw(RuntimeError("MoonPay said 502")))
        db.session.remove()
    jobs = text(operator.get("/console/jobs"))
    assert "wallets_checked</span> 7" in jobs and "MoonPay said 502" in jobs and "Run now" in jobs
    job = operator.get("/console/jobs/provider-reconciliation")
    assert job.status_code == 200 and "failed" in text(job) and "MoonPay said 502" in text(job)
    run_id = re.search(r'href="/console/jobs/runs/([0-9a-f-]+)"', text(job)).group(1)
    run = text(operator.get(f"/console/jobs/runs/{run_id}"))
    assert "RuntimeError: MoonPay said 502" in run
    cli = operator.get("/console/jobs/reconcile-balance")
    assert cli.status_code == 200 and "Run now" not in text(cli)
    assert operator.get("/console/jobs/no-such-job").status_code == 404


def test_the_access_log_is_filtered_by_admin_action_target_and_since(app, operator, admin, make_user, client,
                                                                     auth_headers):
    other = make_user(email="other-admin@example.com", role="ADMIN")
    alert = raise_one(app)
    client.get(f"/admin/alerts/{alert}", headers=auth_headers(other))
    operator.get("/console/jobs")
    by_admin = table_of(operator.get("/console/access-log?admin=other-admin@example.com"))
    assert "admin.AlertById" in by_admin and "console.jobs_list" not in by_admin
    by_id = table_of(operator.get(f"/console/access-log?admin={other.id}"))
    assert "admin.AlertById" in by_id
    by_action = table_of(operator.get("/console/access-log?action=console.jobs_list"))
    assert "console.jobs_list" in by_action and "admin.AlertById" not in by_action
    by_target = table_of(operator.get(f"/console/access-log?target={alert}"))
    assert "admin.AlertById" in by_target and "console.jobs_list" not in by_target
    future = text(operator.get("/console/access-log?since=2999-01-01T00:00"))
    assert "No records match" in future
    assert operator.get("/console/access-log?since=yesterday").status_code == 422
    assert operator.get("/console/access-log?admin=nobody@example.com").status_code == 422
