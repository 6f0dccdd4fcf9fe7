"""Request and response shapes of on-ramp sessions and transactions, and the webhook acknowledgement."""
from marshmallow import Schema, fields

from wallet_api.onramp.moonpay import BASE_CURRENCIES
from wallet_api.pagination import page_schema
from wallet_api.wallets.schemas import AmountField, CurrencyField, MoneyField


class CreateSessionSchema(Schema):
    wallet_id = fields.UUID(required=True, metadata={"description": "One of your crypto wallets (BTC, ETH, SOL, USDC)"})
    base_currency = CurrencyField(choices=BASE_CURRENCIES, required=True)
    base_amount = AmountField(required=True, metadata={"description": "Fiat amount to spend, at most 2 decimals",
                                                       "example": "100.00"})


class OnrampTransactionSchema(Schema):
    id = fields.UUID(dump_only=True)
    status = fields.String(dump_only=True, metadata={
        "description": "pending | waiting_payment | waiting_authorization | completed | failed"})
    wallet_id = fields.UUID(dump_only=True)
    currency = fields.String(dump_only=True)
    base_currency = fields.String(dump_only=True)
    base_amount = MoneyField("base_currency")
    moonpay_transaction_id = fields.String(dump_only=True, allow_none=True)
    crypto_transaction_id = fields.String(dump_only=True, allow_none=True)
    quote_currency_amount = MoneyField(allow_none=True, metadata={"description": "The credited amount"})
    failure_reason = fields.String(dump_only=True, allow_none=True)
    ledger_transaction_id = fields.UUID(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)
    completed_at = fields.DateTime(dump_only=True, allow_none=True)
    failed_at = fields.DateTime(dump_only=True, allow_none=True)


class SessionSchema(Schema):
    id = fields.UUID(dump_only=True, attribute="transaction.id")
    status = fields.String(dump_only=True, attribute="transaction.status")
    widget_url = fields.String(dump_only=True, metadata={
        "description": "MoonPay buy widget, signed with the MoonPay secret key"})
    wallet_id = fields.UUID(dump_only=True, attribute="transaction.wallet_id")
    currency = fields.String(dump_only=True, attribute="transaction.currency")
    base_currency = fields.String(dump_only=True, attribute="transaction.base_currency")
    base_amount = MoneyField("transaction.base_currency", attribute="transaction.base_amount")
    created_at = fields.DateTime(dump_only=True, attribute="transaction.created_at")


OnrampTransactionPageSchema = page_schema(OnrampTransactionSchema, "OnrampTransactionPage")


class WebhookAckSchema(Schema):
    received = fields.Boolean()
    duplicate = fields.Boolean(metadata={"description": "Present and true when this event was already stored"})
