"""Request and response shapes of wallets, the ledger, transfers and admin adjustments.

Amounts travel as decimal strings in plain notation. `AmountField` checks the shape, sign and
size; the currency's precision needs the wallet, so the service checks it (amounts.check_amount).
Responses format amounts at the currency's precision through `MoneyField` (never a float, never
exponent notation).
"""
import re

from marshmallow import Schema, ValidationError, fields, validate
from marshmallow.utils import get_value

from wallet_api.flat_schema import FlatSchema
from wallet_api.pagination import page_schema
from wallet_api.wallets import amounts
from wallet_api.wallets.currencies import MAX_AMOUNT, SUPPORTED

MAX_REFERENCE_LENGTH = 255
MAX_REASON_LENGTH = 500
# One character that is not whitespace as Python sees it (str.isspace), spelled so that ECMA-262 (the
# dialect of OpenAPI's `pattern`) reads the same set: "contains a non-blank character" in both.
NOT_BLANK_PATTERN = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_NOT_BLANK = re.compile(NOT_BLANK_PATTERN)


def not_blank(error: str = "Must not be blank."):
    """A validator refusing text that is empty or only whitespace; document it with NOT_BLANK_PATTERN."""

    def validate(value: str) -> None:
        if not _NOT_BLANK.search(value):
            raise ValidationError(error)

    return validate


class AmountField(fields.Field):
    """A positive decimal string such as "10.50" -> Decimal. JSON numbers are refused."""

    def __init__(self, **kwargs):
        metadata = {"type": "string", "pattern": amounts.AMOUNT_PATTERN.pattern, "example": "10.50",
                    "description": f"Decimal string, > 0, at most {MAX_AMOUNT:f}, at most the currency's "
                                   "precision in decimals.", **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return amounts.parse_amount(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class MoneyField(fields.Field):
    """Dump a Decimal as a string at the precision of the currency named by `currency_attr`
    (a dotted path on the dumped object; default `currency`)."""

    def __init__(self, currency_attr: str = "currency", **kwargs):
        metadata = {"type": "string", "example": "10.50", **kwargs.pop("metadata", {})}
        super().__init__(dump_only=True, metadata=metadata, **kwargs)
        self.currency_attr = currency_attr

    def _serialize(self, value, attr, obj, **kwargs):
        return amounts.format_money(value, get_value(obj, self.currency_attr))


class CurrencyField(fields.String):
    """A currency code among `choices` (default: every supported currency), in any case, normalised
    to upper case."""

    def __init__(self, choices: tuple[str, ...] = SUPPORTED, **kwargs):
        metadata = {"enum": list(choices), "example": choices[0],
                    "description": "Currency code (case-insensitive).", **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)
        self.choices = choices

    def _deserialize(self, value, attr, data, **kwargs):
        code = super()._deserialize(value, attr, data, **kwargs).strip().upper()
        if code not in self.choices:
            raise ValidationError(f"Unsupported currency; use one of: {', '.join(self.choices)}.")
        return code


class WalletCreateSchema(Schema):
    currency = CurrencyField(required=True)


class WalletSchema(FlatSchema):
    id = fields.UUID(dump_only=True)
    currency = fields.String(dump_only=True)
    balance = MoneyField()
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class LedgerEntrySchema(FlatSchema):
    id = fields.Integer(dump_only=True)
    transaction_id = fields.UUID(dump_only=True)
    amount = MoneyField(metadata={"description": "Signed: positive credits the wallet, negative debits it."})
    balance_after = MoneyField()
    kind = fields.String(dump_only=True)
    reference = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    currency = fields.String(dump_only=True)


LedgerPageSchema = page_schema(LedgerEntrySchema, "LedgerPage")


class TransferCreateSchema(Schema):
    from_wallet_id = fields.UUID(required=True)
    to_wallet_id = fields.UUID(required=True)
    amount = AmountField(required=True)
    reference = fields.String(load_default=None, allow_none=True,
                              validate=validate.Length(min=1, max=MAX_REFERENCE_LENGTH))


class TransferSchema(FlatSchema):
    id = fields.UUID(dump_only=True)
    from_wallet_id = fields.UUID(dump_only=True)
    to_wallet_id = fields.UUID(dump_only=True)
    amount = MoneyField()
    currency = fields.String(dump_only=True)
    reference = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)


class AdjustmentCreateSchema(Schema):
    amount = AmountField(required=True)
    reason = fields.String(required=True, metadata={"pattern": NOT_BLANK_PATTERN}, validate=[
        validate.Length(min=1, max=MAX_REASON_LENGTH,
                        error=f"reason must be 1 to {MAX_REASON_LENGTH} characters."),
        not_blank("reason must not be blank.")])


class AdjustmentSchema(FlatSchema):
    id = fields.UUID(dump_only=True)
    kind = fields.String(dump_only=True)
    wallet_id = fields.UUID(dump_only=True)
    counter_wallet_id = fields.UUID(dump_only=True)
    amount = MoneyField()
    currency = fields.String(dump_only=True)
    balance_after = MoneyField()
    reason = fields.String(dump_only=True)
    initiated_by = fields.UUID(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
