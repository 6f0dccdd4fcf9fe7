"""The supported currencies and their precision: the one place that knows them."""
from decimal import Context, Decimal

PRECISION: dict[str, int] = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "USDC": 6,
    "BTC": 8,
    "SOL": 9,
    "ETH": 18,
}
SUPPORTED = tuple(PRECISION)

# Larger amounts are typos or attacks; NUMERIC(38,18) leaves 20 integer digits, we allow 15.
MAX_AMOUNT = Decimal("1e15")


def precision(currency: str) -> int:
    return PRECISION[currency]


_QUANTA = {code: Decimal(1).scaleb(-places) for code, places in PRECISION.items()}


def quantum(currency: str) -> Decimal:
    """The smallest unit, e.g. Decimal('0.01') for USD."""
    return _QUANTA[currency]  # made once: every amount in a response is formatted with one


def format_amount(amount: Decimal, currency: str) -> str:
    """Plain decimal string at the currency's precision: never exponent notation."""
    # 60 digits hold every NUMERIC(38,18) value; the default context (28) would raise on big ETH balances.
    return f"{amount.quantize(quantum(currency), context=_WIDE):f}"


_WIDE = Context(prec=60)
