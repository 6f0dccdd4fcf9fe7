"""Amount parsing and formatting: exact decimals in plain notation, nothing else."""
from decimal import Decimal

import pytest

from wallet_api.errors import Unprocessable
from wallet_api.wallets import amounts


@pytest.mark.parametrize("value,expected", [("10.50", Decimal("10.50")), ("1", Decimal(1)),
                                            ("0.000000000000000001", Decimal("1e-18")),
                                            ("1000000000000000", Decimal("1e15")), ("007.5", Decimal("7.5"))])
def test_plain_decimal_strings_parse_exactly(value, expected):
    assert amounts.parse_amount(value) == expected


@pytest.mark.parametrize("value,message", [
    (10, "decimal string"), (10.5, "decimal string"), (None, "decimal string"), (True, "decimal string"),
    ("", "plain decimal"), (" 1.00", "plain decimal"), ("1.00 ", "plain decimal"), ("1 000", "plain decimal"),
    ("-1", "plain decimal"), ("+1", "plain decimal"), ("1e3", "plain decimal"), ("1E-2", "plain decimal"),
    (".5", "plain decimal"), ("5.", "plain decimal"), ("1,00", "plain decimal"), ("NaN", "plain decimal"),
    ("Infinity", "plain decimal"), ("0x10", "plain decimal"), ("\u0661\u0662", "plain decimal"),
    ("1.00\n", "plain decimal"), ("1" * 65, "plain decimal"),
    ("0", "greater than zero"), ("0.00", "greater than zero"),
    ("1000000000000000.01", "at most 1000000000000000"), ("99999999999999999999", "at most"),
])
def test_anything_else_is_refused_with_a_clear_message(value, message):
    with pytest.raises(ValueError, match=message):
        amounts.parse_amount(value)


@pytest.mark.parametrize("currency,ok,too_fine", [
    ("USD", "0.01", "0.001"), ("EUR", "1.10", "1.105"), ("GBP", "3", "3.000"), ("USDC", "0.000001", "0.0000001"),
    ("BTC", "0.00000001", "0.000000001"), ("SOL", "0.000000001", "0.0000000001"),
    ("ETH", "0.000000000000000001", "0.0000000000000000001")])
def test_precision_is_checked_per_currency_as_written(currency, ok, too_fine):
    amounts.check_amount(Decimal(ok), currency)
    with pytest.raises(Unprocessable) as refused:
        amounts.check_amount(Decimal(too_fine), currency)
    assert refused.value.errors["json"]["amount"] == [refused.value.message]
    assert currency in refused.value.message and "decimal places" in refused.value.message


def test_formatting_is_plain_and_exact_even_beyond_28_digits():
    assert amounts.format_money(Decimal("0E-18"), "USD") == "0.00"
    assert amounts.format_money(Decimal("1E+3"), "BTC") == "1000.00000000"
    assert amounts.format_money(Decimal("-5.5"), "USD") == "-5.50"
    big = Decimal("999999999999999.999999999999999999")
    assert amounts.format_money(big, "ETH") == "999999999999999.999999999999999999"
    assert amounts.format_money(None, "ETH") is None


def test_formatting_pads_every_stored_value_to_the_currency_and_leaves_the_thread_context_alone():
    import decimal
    import random

    from wallet_api.wallets import currencies

    rng = random.Random(8)
    before = decimal.getcontext().copy()
    decimal.getcontext().prec = 5  # a caller's narrow context changes nothing
    try:
        for currency, places in currencies.PRECISION.items():
            assert currencies.quantum(currency) == Decimal(1).scaleb(-places)
            for _ in range(300):
                # Any NUMERIC(38,18) value with at most the currency's decimals (what a column holds).
                value = Decimal(rng.randrange(-10 ** 20, 10 ** 20)).scaleb(-rng.randrange(0, places + 1))
                text = amounts.format_money(value, currency)
                assert Decimal(text) == value and "E" not in text
                assert len(text.partition(".")[2]) == places
        assert decimal.getcontext().prec == 5
    finally:
        decimal.setcontext(before)


def test_ledger_arithmetic_never_rounds():
    a = Decimal("99999999999999999999.999999999999999999")
    assert amounts.add(a, Decimal("0.000000000000000001")) == Decimal("100000000000000000000")
