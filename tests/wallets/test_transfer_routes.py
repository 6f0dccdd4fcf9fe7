"""POST/GET /transfers: who may move what, and which amounts are amounts."""
import uuid
from decimal import Decimal

import pytest


@pytest.fixture
def pair(make_user, funded_wallet, make_wallet):
    """(sender, sender's USD wallet with 100.00, recipient, recipient's USD wallet)."""
    sender, recipient = make_user(), make_user()
    return sender, funded_wallet("100.00", user=sender), recipient, make_wallet(recipient, "USD")


def post_transfer(client, headers, source, destination, amount="10.00", **extra):
    return client.post("/transfers", headers=headers, json={
        "from_wallet_id": str(source), "to_wallet_id": str(destination), "amount": amount, **extra})


def test_a_transfer_moves_money_and_is_visible_to_both_owners_only(client, auth_headers, make_user, pair, books):
    sender, source, recipient, destination = pair
    res = post_transfer(client, auth_headers(sender), source, destination, "12.34", reference="invoice 7")
    assert res.status_code == 201
    body = res.get_json()
    assert set(body) == {"id", "from_wallet_id", "to_wallet_id", "amount", "currency", "reference", "created_at"}
    assert (body["from_wallet_id"], body["to_wallet_id"], body["amount"], body["currency"], body["reference"]) == \
        (str(source), str(destination), "12.34", "USD", "invoice 7")
    assert books.balance(source) == Decimal("87.66") and books.balance(destination) == Decimal("12.34")
    for who in (sender, recipient):
        got = client.get(f"/transfers/{body['id']}", headers=auth_headers(who))
        assert got.status_code == 200 and got.get_json() == body
    assert client.get(f"/transfers/{body['id']}", headers=auth_headers(make_user())).status_code == 404
    assert client.get(f"/transfers/{uuid.uuid4()}", headers=auth_headers(sender)).status_code == 404


def test_a_deposit_is_not_a_transfer(client, auth_headers, user, fund, make_wallet):
    wallet = make_wallet(user)
    deposit = fund(wallet, "1.00")
    assert client.get(f"/transfers/{deposit.transaction_id}", headers=auth_headers(user)).status_code == 404


def test_without_a_reference_it_is_null(client, auth_headers, pair):
    sender, source, _, destination = pair
    assert post_transfer(client, auth_headers(sender), source, destination).get_json()["reference"] is None


def test_from_someone_elses_wallet_is_not_found(client, auth_headers, pair, books):
    sender, source, recipient, destination = pair
    res = post_transfer(client, auth_headers(recipient), source, destination)
    assert res.status_code == 404
    assert books.balance(source) == 100


def test_to_a_missing_wallet_is_not_found_and_says_so(client, auth_headers, pair):
    sender, source, _, _ = pair
    missing = uuid.uuid4()
    res = post_transfer(client, auth_headers(sender), source, missing)
    assert res.status_code == 404
    assert "Destination wallet" in res.get_json()["message"] and str(missing) in res.get_json()["message"]


def test_to_a_system_wallet_is_not_found(app, client, auth_headers, pair):
    from wallet_api.wallets import ledger

    sender, source, _, _ = pair
    with app.app_context():
        clearing = ledger.system_wallet_id(account="moonpay_clearing", currency="USD")
    assert post_transfer(client, auth_headers(sender), source, clearing).status_code == 404


def test_to_the_same_wallet_is_422(client, auth_headers, pair):
    sender, source, _, _ = pair
    res = post_transfer(client, auth_headers(sender), source, source)
    assert res.status_code == 422 and res.get_json()["error"] == "same_wallet"


def test_across_currencies_is_422(client, auth_headers, pair, make_wallet):
    sender, source, recipient, _ = pair
    euro = make_wallet(recipient, "EUR")
    res = post_transfer(client, auth_headers(sender), source, euro)
    assert res.status_code == 422 and res.get_json()["error"] == "currency_mismatch"


def test_more_than_the_balance_is_insufficient_funds(client, auth_headers, pair, books):
    sender, source, _, destination = pair
    res = post_transfer(client, auth_headers(sender), source, destination, "100.01")
    assert res.status_code == 422 and res.get_json()["error"] == "insufficient_funds"
    assert books.balance(source) == 100 and books.count("ledger_transactions") == 1
    assert post_transfer(client, auth_headers(sender), source, destination, "100.00").status_code == 201


@pytest.mark.parametrize("amount,fragment", [
    (10, "must be a decimal string"), (10.5, "must be a decimal string"), (None, None),
    ("-1.00", "plain decimal"), ("0", "greater than zero"), ("0.00", "greater than zero"), ("1e2", "plain decimal"),
    ("1E2", "plain decimal"), ("", "plain decimal"), (" 1.00", "plain decimal"), ("1.00 ", "plain decimal"),
    ("1 000", "plain decimal"), ("+1", "plain decimal"), ("1,5", "plain decimal"),
    ("1000000000000000.01", "at most"), ("10000000000000000", "at most"),
    ("1.001", "at most 2 decimal places"),
])
def test_bad_amounts_are_422_field_errors(client, auth_headers, pair, amount, fragment, books):
    sender, source, _, destination = pair
    res = post_transfer(client, auth_headers(sender), source, destination, amount)
    assert res.status_code == 422
    body = res.get_json()
    (message,) = body["errors"]["json"]["amount"]
    if fragment:
        assert fragment in message
    assert books.count("ledger_transactions") == 1


def test_a_missing_amount_is_a_field_error(client, auth_headers, pair):
    sender, source, _, destination = pair
    res = client.post("/transfers", headers=auth_headers(sender),
                      json={"from_wallet_id": str(source), "to_wallet_id": str(destination)})
    assert res.status_code == 422 and "amount" in res.get_json()["errors"]["json"]


@pytest.mark.parametrize("currency,ok,too_fine", [("BTC", "0.00000001", "0.000000001"),
                                                  ("ETH", "0.000000000000000001", "0.0000000000000000001"),
                                                  ("USDC", "0.000001", "0.0000001")])
def test_precision_follows_the_wallets_currency(client, auth_headers, make_user, funded_wallet, make_wallet,
                                                currency, ok, too_fine):
    sender = make_user()
    source, destination = funded_wallet("1", user=sender, currency=currency), make_wallet(currency=currency)
    res = post_transfer(client, auth_headers(sender), source, destination, too_fine)
    assert res.status_code == 422 and "precision" in res.get_json()["errors"]["json"]["amount"][0]
    res = post_transfer(client, auth_headers(sender), source, destination, ok)
    assert res.status_code == 201 and res.get_json()["amount"] == ok


def test_a_reference_longer_than_255_is_refused(client, auth_headers, pair):
    sender, source, _, destination = pair
    res = post_transfer(client, auth_headers(sender), source, destination, reference="x" * 256)
    assert res.status_code == 422 and "reference" in res.get_json()["errors"]["json"]


def test_a_held_wallet_lock_is_a_clean_503_that_writes_nothing(make_settings_app, settings, auth_headers, pair,
                                                                books):
    import psycopg2

    from wallet_api.extensions import db

    sender, source, _, destination = pair
    app = make_settings_app(ledger_lock_timeout_ms=200)
    holder = psycopg2.connect(settings.database_url)
    try:
        holder.cursor().execute("SELECT 1 FROM wallets WHERE id = %s FOR UPDATE", (str(destination),))
        res = app.test_client().post(
            "/transfers", headers={**auth_headers(sender), "Idempotency-Key": "busy-1"},
            json={"from_wallet_id": str(source), "to_wallet_id": str(destination), "amount": "10.00"})
        assert res.status_code == 503
        assert res.get_json()["error"] == "resource_busy" and res.headers["Retry-After"] == "1"
        assert books.count("ledger_transactions") == 1 and books.balance(source) == 100
        assert books.count("idempotency_keys") == 0  # released: the client may retry with the same key
        holder.rollback()
        retry = app.test_client().post(
            "/transfers", headers={**auth_headers(sender), "Idempotency-Key": "busy-1"},
            json={"from_wallet_id": str(source), "to_wallet_id": str(destination), "amount": "10.00"})
        assert retry.status_code == 201
    finally:
        holder.close()
        with app.app_context():
            db.engine.dispose()
