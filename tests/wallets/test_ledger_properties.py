"""Property: whatever sequence of credits, debits, transfers and replays runs, the books stay right."""
import uuid
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wallet_api.wallets import ledger
from wallet_api.wallets.ledger import InsufficientFunds
from wallet_api.wallets.models import SystemAccount

WALLETS = 3
cents = st.integers(min_value=1, max_value=5_000)
wallet_index = st.integers(min_value=0, max_value=WALLETS - 1)
operation = st.one_of(
    st.tuples(st.just("credit"), wallet_index, cents),
    st.tuples(st.just("debit"), wallet_index, cents),
    st.tuples(st.just("transfer"), wallet_index, cents, st.integers(min_value=1, max_value=WALLETS - 1)),
    st.tuples(st.just("replay"), st.integers(min_value=0, max_value=1_000)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=25))
def test_random_operation_sequences_keep_the_books_balanced(app, make_user, make_wallet, books, operations):
    owner = make_user()  # fresh wallets per example: the database is only cleaned between tests
    wallets = [make_wallet(owner, "USD")] + [make_wallet(currency="USD") for _ in range(WALLETS - 1)]
    expected = {w: Decimal(0) for w in wallets}
    history = []  # (the call with its key fixed, its effect on `expected`, whether it succeeded)

    def attempt(call):
        try:
            result = call()
        except InsufficientFunds:
            return None
        return result

    with app.app_context():
        for op in operations:
            if op[0] == "replay":
                if not history:
                    continue
                index = op[1] % len(history)
                call, effect, succeeded = history[index]
                result = attempt(call)
                if succeeded:
                    assert result is not None and result.replayed  # a replay moves nothing
                elif result is not None:  # a refused operation retried with its key is a first attempt
                    assert not result.replayed
                    effect()
                    history[index] = (call, effect, True)
                continue
            amount = Decimal(op[2]) / 100
            wallet = wallets[op[1]]
            ref = uuid.uuid4().hex
            if op[0] == "credit":
                k = ledger.entry_key(source="prop", reference=ref, wallet_id=wallet, action="credit")

                def call(w=wallet, a=amount, k=k):
                    return ledger.credit(wallet_id=w, amount=a, idempotency_key=k, kind="deposit",
                                         counter_account=SystemAccount.MOONPAY_CLEARING)

                def effect(w=wallet, a=amount):
                    expected[w] += a
            elif op[0] == "debit":
                k = ledger.entry_key(source="prop", reference=ref, wallet_id=wallet, action="debit")

                def call(w=wallet, a=amount, k=k):
                    return ledger.debit(wallet_id=w, amount=a, idempotency_key=k, kind="fee")

                def effect(w=wallet, a=amount):
                    expected[w] -= a
            else:
                destination = wallets[(op[1] + op[3]) % WALLETS]
                k = ledger.entry_key(source="prop", reference=ref, wallet_id=wallet, action="debit")

                def call(s=wallet, d=destination, a=amount, k=k):
                    return ledger.transfer(from_wallet_id=s, to_wallet_id=d, amount=a, idempotency_key=k)

                def effect(s=wallet, d=destination, a=amount):
                    expected[s] -= a
                    expected[d] += a
            should_succeed = op[0] == "credit" or expected[wallet] >= amount
            result = attempt(call)
            assert (result is not None) == should_succeed
            if result is not None:
                assert not result.replayed
                assert sum(leg.amount for leg in result.entries) == 0
                effect()
            history.append((call, effect, result is not None))

    for wallet in wallets:
        assert books.balance(wallet) == expected[wallet] == books.entries_sum(wallet)
        assert expected[wallet] >= 0
    assert books.unbalanced_transactions() == 0
    assert books.drifted_wallets() == 0
    assert books.total("USD") == 0
