"""Worked examples: the ledger told as accounting stories (after django-hordak's test_worked_examples).

Sign convention: an entry credits its wallet when positive and debits it when negative; the legs of
every transaction sum to zero, so the money in user wallets always equals minus the money in the
system wallets it came from.
"""
import uuid
from decimal import Decimal

import pytest

from wallet_api.wallets import ledger
from wallet_api.wallets.ledger import InsufficientFunds
from wallet_api.wallets.models import SystemAccount

CLEARING = SystemAccount.MOONPAY_CLEARING
ADJUSTMENTS = SystemAccount.PLATFORM_ADJUSTMENTS


@pytest.fixture
def alice_and_bob(app_ctx, make_user, make_wallet):
    alice, bob = make_user(), make_user()
    return make_wallet(alice, "USD"), make_wallet(bob, "USD")


def deposit(wallet, amount, moonpay_id, currency_account=CLEARING):
    """What the MoonPay webhook worker does for a completed transaction."""
    return ledger.credit(wallet_id=wallet, amount=Decimal(amount), kind="moonpay_deposit",
                         counter_account=currency_account, reference=moonpay_id,
                         idempotency_key=ledger.entry_key(source="webhook:moonpay", reference=moonpay_id,
                                                          wallet_id=wallet, action="credit"))


def pay(source, destination, amount, reference=None):
    return ledger.transfer(from_wallet_id=source, to_wallet_id=destination, amount=Decimal(amount),
                           reference=reference,
                           idempotency_key=ledger.entry_key(source="transfer", reference=uuid.uuid4().hex,
                                                            wallet_id=source, action="debit"))


def test_alice_buys_100_dollars_through_moonpay(alice_and_bob, books):
    alice, _ = alice_and_bob
    # MoonPay takes Alice's card payment and owes us the dollars: the clearing wallet goes to -100,
    # Alice's wallet to +100. Nothing else changes, and USD sums to zero.
    deposit(alice, "100.00", "mp_tx_1")
    assert books.balance(alice) == Decimal("100.00")
    assert books.system_balance(CLEARING, "USD") == Decimal("-100.00")
    assert books.total("USD") == 0


def test_alice_pays_bob_and_the_clearing_wallet_does_not_notice(alice_and_bob, books):
    alice, bob = alice_and_bob
    deposit(alice, "100.00", "mp_tx_2")
    pay(alice, bob, "30.00", reference="concert tickets")
    # A transfer is internal: Alice -30, Bob +30. The platform still holds exactly what MoonPay sent.
    assert (books.balance(alice), books.balance(bob)) == (Decimal("70.00"), Decimal("30.00"))
    assert books.system_balance(CLEARING, "USD") == Decimal("-100.00")
    assert books.balance(alice) + books.balance(bob) == -books.system_balance(CLEARING, "USD")


def test_moonpay_delivers_the_same_webhook_three_times_and_alice_is_credited_once(alice_and_bob, books):
    alice, _ = alice_and_bob
    results = [deposit(alice, "25.00", "mp_tx_3") for _ in range(3)]
    # The entry key names the MoonPay transaction and the wallet: the second and third deliveries
    # find the first credit and return it.
    assert [r.replayed for r in results] == [False, True, True]
    assert len({r.transaction_id for r in results}) == 1
    assert books.balance(alice) == Decimal("25.00") and books.count("ledger_entries") == 2


def test_a_duplicate_deposit_is_corrected_by_an_audited_admin_debit_not_by_deleting(alice_and_bob, make_user, books):
    alice, _ = alice_and_bob
    support = make_user(role="ADMIN")
    deposit(alice, "50.00", "mp_tx_4")
    deposit(alice, "50.00", "mp_tx_4-resent-with-a-new-id")  # the provider's mistake: 50 too many
    correction = ledger.debit(wallet_id=alice, amount=Decimal("50.00"), kind="admin_debit",
                              counter_account=ADJUSTMENTS, initiated_by=support.id,
                              metadata={"reason": "duplicate of mp_tx_4"},
                              idempotency_key=ledger.entry_key(source="admin", reference="ticket-981",
                                                               wallet_id=alice, action="debit"))
    # Alice is back to 50. The clearing wallet still shows the 100 that came in; the adjustments
    # wallet holds the 50 we took back until finance settles it with MoonPay. All three movements
    # stay in the ledger.
    assert books.balance(alice) == Decimal("50.00")
    assert books.system_balance(CLEARING, "USD") == Decimal("-100.00")
    assert books.system_balance(ADJUSTMENTS, "USD") == Decimal("50.00")
    assert correction.leg(alice).balance_after == Decimal("50.00")
    assert books.count("ledger_transactions") == 3 and books.total("USD") == 0


def test_bob_cannot_spend_money_he_does_not_have(alice_and_bob, books):
    alice, bob = alice_and_bob
    deposit(bob, "5.00", "mp_tx_5")
    with pytest.raises(InsufficientFunds):
        pay(bob, alice, "5.01")
    # Refused before anything was written: one transaction (the deposit), Bob still has 5.00.
    assert books.balance(bob) == Decimal("5.00") and books.count("ledger_transactions") == 1


def test_a_mistaken_transfer_is_reversed_by_a_second_transfer(alice_and_bob, books):
    alice, bob = alice_and_bob
    deposit(alice, "80.00", "mp_tx_6")
    mistake = pay(alice, bob, "80.00")
    reversal = pay(bob, alice, "80.00", reference=f"reversal of {mistake.transaction_id}")
    # Both stay on the books: Alice's ledger shows +80, -80, +80 and ends where it started.
    assert books.balance(alice) == Decimal("80.00") and books.balance(bob) == 0
    assert reversal.leg(alice).balance_after == Decimal("80.00")
    assert books.count("ledger_entries") == 6


def test_each_currency_balances_on_its_own(app_ctx, make_user, make_wallet, books):
    carol = make_user()
    usd, btc = make_wallet(carol, "USD"), make_wallet(carol, "BTC")
    deposit(usd, "1000.00", "mp_tx_7")
    deposit(btc, "0.01500000", "mp_tx_8")
    assert books.total("USD") == 0 and books.total("BTC") == 0
    assert books.system_balance(CLEARING, "BTC") == Decimal("-0.015")
    assert books.balance(btc) == Decimal("0.015")
