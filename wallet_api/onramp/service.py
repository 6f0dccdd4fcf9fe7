"""On-ramp sessions: a pending purchase of crypto with fiat, and the signed MoonPay widget URL for it."""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal

from flask import current_app
from sqlalchemy import select

from wallet_api.db_types import utcnow
from wallet_api.errors import NotFound, field_error
from wallet_api.extensions import db
from wallet_api.onramp import moonpay
from wallet_api.onramp.models import OnrampStatus, OnrampTransaction
from wallet_api.pagination import Page, keyset_page
from wallet_api.onramp.widget import build_widget_url
from wallet_api.wallets import amounts
from wallet_api.wallets import service as wallet_service
from wallet_api.wallets.currencies import quantum

@dataclass(frozen=True)
class Session:
    transaction: OnrampTransaction
    widget_url: str


def create_session(*, user_id: uuid.UUID, wallet_id: uuid.UUID, base_currency: str, base_amount: Decimal,
                   now: dt.datetime | None = None) -> Session:
    """Record a pending on-ramp purchase into one of the user's wallets and sign its widget URL."""
    settings = current_app.config["SETTINGS"]
    wallet = wallet_service.get_wallet(user_id=user_id, wallet_id=wallet_id)
    moonpay_code = moonpay.CURRENCY_CODES.get(wallet.currency)
    if moonpay_code is None:
        raise field_error("wallet_id", f"{wallet.currency} cannot be bought through MoonPay; "
                                       f"use a {', '.join(moonpay.CURRENCY_CODES)} wallet.",
                          error="unsupported_currency")
    base_currency = base_currency.upper()
    if base_currency not in moonpay.BASE_CURRENCIES:
        raise field_error("base_currency", f"Must be one of: {', '.join(c.lower() for c in moonpay.BASE_CURRENCIES)}.")
    amounts.check_amount(base_amount, base_currency, field="base_amount")
    base_amount = base_amount.quantize(quantum(base_currency))  # exact: check_amount allowed no more decimals
    now = now or utcnow()
    transaction = OnrampTransaction(id=uuid.uuid4(), user_id=user_id, wallet_id=wallet.id,
                                    currency=wallet.currency, base_currency=base_currency,
                                    base_amount=base_amount, status=OnrampStatus.PENDING,
                                    created_at=now, updated_at=now)
    db.session.add(transaction)
    db.session.commit()
    widget_url = build_widget_url(
        base_url=settings.moonpay_widget_base_url, publishable_key=settings.moonpay_publishable_key,
        secret_key=settings.moonpay_secret_key,
        params={
            "currencyCode": moonpay_code,
            "baseCurrencyCode": base_currency.lower(),
            "baseCurrencyAmount": f"{base_amount:f}",
            "externalTransactionId": str(transaction.id),
            "externalCustomerId": str(user_id),
        },
    )
    return Session(transaction=transaction, widget_url=widget_url)


def get_transaction(*, user_id: uuid.UUID, transaction_id: uuid.UUID) -> OnrampTransaction:
    """One of the user's on-ramp transactions; 404 for anyone else's."""
    transaction = db.session.execute(
        select(OnrampTransaction).where(OnrampTransaction.id == transaction_id,
                                        OnrampTransaction.user_id == user_id)
    ).scalar_one_or_none()
    if transaction is None:
        raise NotFound("On-ramp transaction not found.")
    return transaction


def list_transactions(*, user_id: uuid.UUID, limit: int, cursor: str | None) -> Page:
    """The user's on-ramp transactions, newest first, one page at a time."""
    query = select(OnrampTransaction).where(OnrampTransaction.user_id == user_id)
    return keyset_page(query, OnrampTransaction, limit=limit, cursor=cursor)
