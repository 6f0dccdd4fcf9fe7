"""On-ramp sessions and transactions through the API: a user buys into their own crypto wallets only,
and gets a widget URL signed the way MoonPay verifies it."""
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import TEST_MOONPAY_SECRET
from wallet_api.onramp.widget import verify_widget_url


@pytest.fixture
def eth_wallet(user, crypto_wallet):
    return crypto_wallet(user, "ETH")


def start(client, headers, wallet_id, base_currency="usd", base_amount="100.00"):
    return client.post("/onramp/sessions", headers=headers,
                       json={"wallet_id": str(wallet_id), "base_currency": base_currency, "base_amount": base_amount})


def test_a_session_is_a_pending_transaction_with_a_signed_widget_url(client, user, auth_headers, eth_wallet, books):
    res = start(client, auth_headers(user), eth_wallet, base_currency="USD", base_amount="250.5")
    assert res.status_code == 201, res.get_json()
    body = res.get_json()
    assert body["status"] == "pending"
    assert body["wallet_id"] == str(eth_wallet)
    assert (body["currency"], body["base_currency"], body["base_amount"]) == ("ETH", "USD", "250.50")
    assert body["created_at"]

    url = body["widget_url"]
    assert url.startswith("https://buy.moonpay.com?")
    assert verify_widget_url(url, TEST_MOONPAY_SECRET)
    assert not verify_widget_url(url, "sk_other")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["apiKey"] == "pk_test_key"
    assert query["externalTransactionId"] == body["id"]
    assert query["externalCustomerId"] == str(user.id)
    assert (query["currencyCode"], query["baseCurrencyCode"], query["baseCurrencyAmount"]) == ("eth", "usd", "250.50")
    assert list(query)[-1] == "signature"

    row = books.onramp(body["id"])
    assert (row["status"], row["user_id"], row["base_currency"]) == ("pending", user.id, "USD")


def test_a_session_into_another_users_wallet_is_404(client, make_user, auth_headers, crypto_wallet, books):
    owner, intruder = make_user(), make_user()
    res = start(client, auth_headers(intruder), crypto_wallet(owner, "BTC"))
    assert res.status_code == 404
    assert books.count("onramp_transactions") == 0


def test_an_unknown_wallet_is_404(client, user, auth_headers):
    assert start(client, auth_headers(user), uuid.uuid4()).status_code == 404


def test_a_fiat_wallet_cannot_be_bought_into(client, user, auth_headers, crypto_wallet):
    res = start(client, auth_headers(user), crypto_wallet(user, "USD"))
    assert res.status_code == 422
    assert res.get_json()["error"] == "unsupported_currency"


@pytest.mark.parametrize("base_currency, base_amount, field", [
    ("jpy", "100.00", "base_currency"),
    ("btc", "100.00", "base_currency"),
    ("usd", "100.001", "base_amount"),
    ("usd", "0", "base_amount"),
    ("usd", "-5", "base_amount"),
    ("usd", "1e3", "base_amount"),
    ("usd", 100, "base_amount"),
    ("usd", "10000000000000000", "base_amount"),
])
def test_invalid_fiat_amounts_and_currencies_are_422(client, user, auth_headers, eth_wallet, base_currency,
                                                     base_amount, field):
    res = start(client, auth_headers(user), eth_wallet, base_currency, base_amount)
    assert res.status_code == 422
    assert field in res.get_json()["errors"]["json"]


@pytest.mark.parametrize("base_currency", ["usd", "EUR", "Gbp"])
def test_base_currencies_are_case_insensitive(client, user, auth_headers, eth_wallet, base_currency):
    res = start(client, auth_headers(user), eth_wallet, base_currency, "20")
    assert res.status_code == 201
    assert res.get_json()["base_currency"] == base_currency.upper()


def test_sessions_need_a_token(client, eth_wallet):
    assert start(client, {}, eth_wallet).status_code == 401


def test_transactions_are_listed_newest_first_with_a_cursor(client, user, make_user, auth_headers, crypto_wallet):
    headers = auth_headers(user)
    wallets = [crypto_wallet(user, c) for c in ("ETH", "BTC", "SOL")]
    created = [start(client, headers, wallets[i % 3], base_amount=f"{10 + i}").get_json()["id"] for i in range(5)]
    other = make_user()
    start(client, auth_headers(other), crypto_wallet(other, "ETH"))

    first = client.get("/onramp/transactions?limit=2", headers=headers).get_json()
    assert [t["id"] for t in first["items"]] == created[::-1][:2]
    second = client.get(f"/onramp/transactions?limit=2&cursor={first['next_cursor']}", headers=headers).get_json()
    third = client.get(f"/onramp/transactions?limit=2&cursor={second['next_cursor']}", headers=headers).get_json()
    assert [t["id"] for t in second["items"] + third["items"]] == created[::-1][2:]
    assert third["next_cursor"] is None
    item = first["items"][0]
    assert set(item) >= {"id", "status", "wallet_id", "currency", "base_currency", "base_amount",
                         "moonpay_transaction_id", "crypto_transaction_id", "quote_currency_amount",
                         "failure_reason", "ledger_transaction_id", "created_at", "updated_at", "completed_at"}
    assert item["quote_currency_amount"] is None and item["base_amount"] == "14.00"


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "cursor=not-a-cursor", "limit=abc"])
def test_bad_page_parameters_are_422(client, user, auth_headers, query):
    assert client.get(f"/onramp/transactions?{query}", headers=auth_headers(user)).status_code == 422


def test_one_transaction_is_visible_to_its_owner_only(client, user, make_user, auth_headers, eth_wallet):
    tx_id = start(client, auth_headers(user), eth_wallet).get_json()["id"]
    mine = client.get(f"/onramp/transactions/{tx_id}", headers=auth_headers(user))
    assert mine.status_code == 200 and mine.get_json()["id"] == tx_id
    assert client.get(f"/onramp/transactions/{tx_id}", headers=auth_headers(make_user())).status_code == 404
    assert client.get(f"/onramp/transactions/{uuid.uuid4()}", headers=auth_headers(user)).status_code == 404


def test_a_completed_transaction_shows_the_credit(client, user, auth_headers, onramp, books, run_jobs):
    from tests.onramp.support import moonpay_event, post_webhook

    onramp_id, wallet_id = onramp(user, "BTC")
    post_webhook(client, moonpay_event(onramp_id=onramp_id, user_id=user.id, currency="btc", amount="0.0015",
                                       crypto_tx="btc-hash"))
    run_jobs()
    body = client.get(f"/onramp/transactions/{onramp_id}", headers=auth_headers(user)).get_json()
    assert body["status"] == "completed"
    assert body["quote_currency_amount"] == "0.00150000"
    assert body["crypto_transaction_id"] == "btc-hash" and body["moonpay_transaction_id"] == "mp_tx_1"
    assert body["ledger_transaction_id"] and body["completed_at"]


def test_onramp_routes_are_rate_limited_per_user(make_settings_app, make_user, auth_headers, crypto_wallet):
    from wallet_api.config import RateLimits

    app = make_settings_app(ratelimit_enabled=True, rate_limits=RateLimits(onramp="2/minute"))
    client = app.test_client()
    alice, bob = make_user(), make_user()
    codes = [client.get("/onramp/transactions", headers=auth_headers(alice)).status_code,
             client.get(f"/onramp/transactions/{uuid.uuid4()}", headers=auth_headers(alice)).status_code,
             client.get("/onramp/transactions", headers=auth_headers(alice)).status_code]
    assert codes == [200, 404, 429]  # one on-ramp budget across the routes
    limited = client.post("/onramp/sessions", headers=auth_headers(alice),
                          json={"wallet_id": str(crypto_wallet(alice, "ETH")), "base_currency": "usd",
                                "base_amount": "10"})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert client.get("/onramp/transactions", headers=auth_headers(bob)).status_code == 200
