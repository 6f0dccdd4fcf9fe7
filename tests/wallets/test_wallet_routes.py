"""The wallet REST contract: own wallets only, balances as decimal strings, the ledger by cursor."""
import uuid
from decimal import Decimal

import pytest

from wallet_api.wallets.currencies import SUPPORTED

PROTECTED = [
    ("get", "/wallets"), ("post", "/wallets"), ("get", "/wallets/{id}"), ("get", "/wallets/{id}/ledger"),
    ("post", "/transfers"), ("get", "/transfers/{id}"),
]


@pytest.mark.parametrize("method,path", PROTECTED)
def test_every_wallet_route_needs_a_token_before_anything_else(client, method, path):
    res = getattr(client, method)(path.format(id=uuid.uuid4()), json={"nonsense": 1})
    assert res.status_code == 401
    assert res.get_json()["code"] == 401


def test_opening_a_wallet_returns_it_with_a_zero_balance_at_its_precision(client, user, auth_headers):
    res = client.post("/wallets", json={"currency": "BTC"}, headers=auth_headers(user))
    assert res.status_code == 201
    body = res.get_json()
    assert set(body) == {"id", "currency", "balance", "created_at", "updated_at"}
    assert body["currency"] == "BTC" and body["balance"] == "0.00000000"
    uuid.UUID(body["id"])


def test_currency_codes_are_case_insensitive(client, user, auth_headers):
    res = client.post("/wallets", json={"currency": "eth"}, headers=auth_headers(user))
    assert res.status_code == 201 and res.get_json()["balance"] == "0." + "0" * 18


def test_one_wallet_per_currency(client, user, auth_headers):
    assert client.post("/wallets", json={"currency": "USD"}, headers=auth_headers(user)).status_code == 201
    res = client.post("/wallets", json={"currency": "USD"}, headers=auth_headers(user))
    assert res.status_code == 409 and res.get_json()["error"] == "wallet_exists"


@pytest.mark.parametrize("body", [{"currency": "DOGE"}, {"currency": ""}, {"currency": 1}, {},
                                  {"currency": "USD", "x": 1}])
def test_unsupported_or_malformed_currency_is_422(client, user, auth_headers, body):
    res = client.post("/wallets", json=body, headers=auth_headers(user))
    assert res.status_code == 422
    assert res.get_json()["error"] == "validation_error"


def test_the_unsupported_currency_error_lists_the_supported_ones(client, user, auth_headers):
    res = client.post("/wallets", json={"currency": "DOGE"}, headers=auth_headers(user))
    (message,) = res.get_json()["errors"]["json"]["currency"]
    assert all(code in message for code in SUPPORTED)


def test_listing_shows_only_my_wallets_as_a_json_array(client, make_user, auth_headers, make_wallet):
    me, other = make_user(), make_user()
    mine = {str(make_wallet(me, "USD")), str(make_wallet(me, "BTC"))}
    make_wallet(other, "USD")
    res = client.get("/wallets", headers=auth_headers(me))
    assert res.status_code == 200
    assert isinstance(res.get_json(), list)
    assert {w["id"] for w in res.get_json()} == mine


def test_another_users_wallet_is_not_found_never_forbidden(client, make_user, auth_headers, funded_wallet):
    owner, stranger = make_user(), make_user()
    wallet = funded_wallet("5.00", user=owner)
    for path in (f"/wallets/{wallet}", f"/wallets/{wallet}/ledger"):
        assert client.get(path, headers=auth_headers(stranger)).status_code == 404
        assert client.get(path, headers=auth_headers(owner)).status_code == 200
    assert client.get(f"/wallets/{uuid.uuid4()}", headers=auth_headers(owner)).status_code == 404
    assert client.get("/wallets/not-a-uuid", headers=auth_headers(owner)).status_code == 404


def test_balances_are_decimal_strings_never_floats_or_exponents(client, user, auth_headers, funded_wallet):
    btc = funded_wallet("0.00000001", user=user, currency="BTC")
    eth = funded_wallet("123456789012345.123456789012345678", user=user, currency="ETH")
    assert client.get(f"/wallets/{btc}", headers=auth_headers(user)).get_json()["balance"] == "0.00000001"
    assert client.get(f"/wallets/{eth}", headers=auth_headers(user)).get_json()["balance"] == \
        "123456789012345.123456789012345678"


def test_the_ledger_lists_entries_newest_first_with_signed_amounts(client, user, auth_headers, funded_wallet,
                                                                   make_wallet):
    wallet = funded_wallet("10.00", user=user)
    other = make_wallet()
    client.post("/transfers", json={"from_wallet_id": str(wallet), "to_wallet_id": str(other), "amount": "2.50",
                                    "reference": "lunch"}, headers=auth_headers(user))
    res = client.get(f"/wallets/{wallet}/ledger", headers=auth_headers(user))
    assert res.status_code == 200
    body = res.get_json()
    assert body["next_cursor"] is None
    newest, oldest = body["items"]
    assert set(newest) >= {"id", "transaction_id", "amount", "balance_after", "kind", "reference", "created_at"}
    assert (newest["amount"], newest["balance_after"], newest["kind"], newest["reference"]) == \
        ("-2.50", "7.50", "transfer", "lunch")
    assert (oldest["amount"], oldest["balance_after"], oldest["kind"]) == ("10.00", "10.00", "deposit")
    assert newest["id"] > oldest["id"]


def test_ledger_pages_follow_the_cursor_without_gaps_or_repeats_while_entries_arrive(
        client, user, auth_headers, make_wallet, fund):
    wallet = make_wallet(user)
    for i in range(25):
        fund(wallet, f"{i + 1}.00")
    headers = auth_headers(user)
    first = client.get(f"/wallets/{wallet}/ledger", headers=headers).get_json()
    assert len(first["items"]) == 20 and first["next_cursor"]
    assert [e["amount"] for e in first["items"]] == [f"{n}.00" for n in range(25, 5, -1)]
    fund(wallet, "100.00")  # a new entry arrives between pages: it belongs before page one, not in page two
    second = client.get(f"/wallets/{wallet}/ledger", query_string={"cursor": first["next_cursor"]},
                        headers=headers).get_json()
    assert [e["amount"] for e in second["items"]] == [f"{n}.00" for n in range(5, 0, -1)]
    assert second["next_cursor"] is None
    small = client.get(f"/wallets/{wallet}/ledger", query_string={"limit": 1}, headers=headers).get_json()
    assert [e["amount"] for e in small["items"]] == ["100.00"] and small["next_cursor"]
    everything = client.get(f"/wallets/{wallet}/ledger", query_string={"limit": 100}, headers=headers).get_json()
    assert len(everything["items"]) == 26 and everything["next_cursor"] is None


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 101}, {"limit": "ten"}, {"limit": -1}])
def test_ledger_limit_must_be_1_to_100(client, user, auth_headers, make_wallet, query):
    wallet = make_wallet(user)
    res = client.get(f"/wallets/{wallet}/ledger", query_string=query, headers=auth_headers(user))
    assert res.status_code == 422
    assert "limit" in res.get_json()["errors"]["query"]


@pytest.mark.parametrize("cursor", ["garbage", "djE6YWJj", "djE6LTU", "eDox", "%%%",
                                    "djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5"])
def test_a_bad_cursor_is_422_with_a_message(client, user, auth_headers, make_wallet, cursor):
    wallet = make_wallet(user)
    res = client.get(f"/wallets/{wallet}/ledger", query_string={"cursor": cursor}, headers=auth_headers(user))
    assert res.status_code == 422
    body = res.get_json()
    assert body["error"] == "invalid_cursor" and "cursor" in body["errors"]["query"]


def test_a_wallet_balance_is_the_sum_of_its_ledger(client, user, auth_headers, funded_wallet, fund):
    wallet = funded_wallet("1.10", user=user)
    fund(wallet, "2.20")
    balance = client.get(f"/wallets/{wallet}", headers=auth_headers(user)).get_json()["balance"]
    items = client.get(f"/wallets/{wallet}/ledger", headers=auth_headers(user)).get_json()["items"]
    assert Decimal(balance) == sum(Decimal(e["amount"]) for e in items) == Decimal("3.30")
