"""Admin adjustments: ADMIN only, a reason always, balanced against the platform adjustments wallet."""
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import text

from wallet_api.extensions import db
from wallet_api.wallets.models import SystemAccount

ADJUSTMENTS = SystemAccount.PLATFORM_ADJUSTMENTS


def adjust(client, headers, wallet, action, amount="25.00", reason="chargeback reversal #42", **extra_headers):
    return client.post(f"/admin/wallets/{wallet}/{action}", json={"amount": amount, "reason": reason},
                       headers={**headers, **extra_headers})


@pytest.mark.parametrize("action", ["credit", "debit"])
def test_only_admins_may_adjust(client, auth_headers, user, make_wallet, action):
    wallet = make_wallet(user)
    assert client.post(f"/admin/wallets/{wallet}/{action}", json={}).status_code == 401
    res = adjust(client, auth_headers(user), wallet, action)
    assert res.status_code == 403 and res.get_json()["error"] == "forbidden"


def test_an_admin_credit_is_balanced_against_the_adjustments_wallet_and_keeps_who_and_why(
        app, client, auth_headers, admin, user, make_wallet, books):
    wallet = make_wallet(user)
    res = adjust(client, auth_headers(admin), wallet, "credit", "25.00")
    assert res.status_code == 201
    body = res.get_json()
    assert (body["kind"], body["wallet_id"], body["amount"], body["currency"], body["balance_after"],
            body["reason"], body["initiated_by"]) == \
        ("admin_credit", str(wallet), "25.00", "USD", "25.00", "chargeback reversal #42", str(admin.id))
    assert books.balance(wallet) == Decimal("25.00")
    assert books.system_balance(ADJUSTMENTS, "USD") == Decimal("-25.00")
    with app.app_context():
        row = db.session.execute(text("SELECT initiated_by, metadata FROM ledger_transactions WHERE id = :id"),
                                 {"id": body["id"]}).one()
    assert row.initiated_by == admin.id
    assert row.metadata == {"reason": "chargeback reversal #42", "admin_id": str(admin.id), "channel": "admin_api"}


def test_an_admin_debit_never_takes_a_wallet_below_zero(client, auth_headers, admin, user, funded_wallet, books):
    wallet = funded_wallet("10.00", user=user)
    short = adjust(client, auth_headers(admin), wallet, "debit", "10.01")
    assert short.status_code == 422 and short.get_json()["error"] == "insufficient_funds"
    res = adjust(client, auth_headers(admin), wallet, "debit", "10.00", reason="duplicate deposit")
    assert res.status_code == 201
    assert res.get_json()["kind"] == "admin_debit" and res.get_json()["balance_after"] == "0.00"
    assert books.balance(wallet) == 0
    assert books.system_balance(ADJUSTMENTS, "USD") == Decimal("10.00")


@pytest.mark.parametrize("body", [{"amount": "1.00"}, {"amount": "1.00", "reason": ""},
                                  {"amount": "1.00", "reason": "   "}, {"amount": "1.00", "reason": "x" * 501},
                                  {"amount": "1.00", "reason": None}, {"reason": "why"},
                                  {"amount": 1, "reason": "why"}, {"amount": "1.001", "reason": "why"}])
def test_a_reason_and_a_valid_amount_are_required(client, auth_headers, admin, make_wallet, body, books):
    wallet = make_wallet()
    res = client.post(f"/admin/wallets/{wallet}/credit", json=body, headers=auth_headers(admin))
    assert res.status_code == 422
    assert books.count("ledger_transactions") == 0


def test_a_500_character_reason_is_fine(client, auth_headers, admin, make_wallet):
    assert adjust(client, auth_headers(admin), make_wallet(), "credit", reason="r" * 500).status_code == 201


def test_unknown_and_system_wallets_are_not_found(app, client, auth_headers, admin):
    from wallet_api.wallets import ledger

    with app.app_context():
        system = ledger.system_wallet_id(account=ADJUSTMENTS, currency="USD")
    for wallet in (uuid.uuid4(), system):
        assert adjust(client, auth_headers(admin), wallet, "credit").status_code == 404


def test_the_idempotency_key_is_honoured(client, auth_headers, admin, make_wallet, books):
    wallet = make_wallet()
    first = adjust(client, auth_headers(admin), wallet, "credit", **{"Idempotency-Key": "incident-17"})
    again = adjust(client, auth_headers(admin), wallet, "credit", **{"Idempotency-Key": "incident-17"})
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_json() == first.get_json()
    assert books.balance(wallet) == Decimal("25.00")
    other_wallet = make_wallet()
    reused = adjust(client, auth_headers(admin), other_wallet, "credit", **{"Idempotency-Key": "incident-17"})
    assert reused.status_code == 422 and reused.get_json()["error"] == "idempotency_key_reused"
