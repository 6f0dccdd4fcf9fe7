"""`flask moonpay-webhook ONRAMP_ID [--status completed] [--amount 0.05] [--url URL]`: play MoonPay.

For development and demos only (refused in production): builds the webhook MoonPay would send for
one of our on-ramp sessions, signs it with MOONPAY_WEBHOOK_SECRET exactly as MoonPay does
(`Moonpay-Signature-V2: t=<unix>,s=<hex HMAC-SHA256>`), and POSTs it to the running app, so a
newcomer goes from `POST /onramp/sessions` to a credited wallet with curl and one command. The
worker applies it like any real webhook.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from decimal import Decimal, InvalidOperation

import click
import httpx
from flask import Flask, current_app

from wallet_api.extensions import db
from wallet_api.onramp import moonpay
from wallet_api.onramp.models import OnrampTransaction
from wallet_api.onramp.signature import sign_webhook

EVENT_TYPES = {"completed": "transaction_updated", "failed": "transaction_failed"}


def register(app: Flask) -> None:
    @app.cli.command("moonpay-webhook")
    @click.argument("onramp_id", type=click.UUID)
    @click.option("--status", type=click.Choice(list(moonpay.STATUS)), default="completed", show_default=True,
                  help="MoonPay's status to report.")
    @click.option("--amount", default="0.01", show_default=True,
                  help="quoteCurrencyAmount: the crypto amount MoonPay delivered (a completed purchase is "
                       "credited exactly this).")
    @click.option("--url", default=lambda: f"http://127.0.0.1:{os.environ.get('PORT', '8000')}",
                  show_default="http://127.0.0.1:$PORT", help="Where the app listens.")
    def moonpay_webhook(onramp_id: uuid.UUID, status: str, amount: str, url: str) -> None:
        """Send a signed MoonPay test webhook for an on-ramp session to the running app (not in production)."""
        settings = current_app.config["SETTINGS"]
        if settings.is_production:
            raise click.UsageError("refused in production: MoonPay itself sends the webhooks there.")
        try:
            quote = Decimal(amount)
        except InvalidOperation:
            raise click.BadParameter("not a decimal number", param_hint="--amount") from None
        session = db.session.get(OnrampTransaction, onramp_id)
        if session is None:
            raise click.BadParameter(f"no on-ramp session {onramp_id}", param_hint="ONRAMP_ID")
        body = test_webhook(session, status=status, quote_amount=quote)
        signature = sign_webhook(body=body, secret=settings.moonpay_webhook_secret, timestamp=int(time.time()))
        try:
            response = httpx.post(f"{url.rstrip('/')}/webhooks/moonpay", content=body, timeout=10,
                                  headers={"Content-Type": "application/json", "Moonpay-Signature-V2": signature})
        except httpx.HTTPError as exc:
            raise click.ClickException(f"could not reach the app at {url}: {exc}") from None
        click.echo(f"POST {url.rstrip('/')}/webhooks/moonpay -> {response.status_code} {response.text.strip()}")
        if response.status_code != 200:
            raise click.ClickException("the app refused the webhook")
        click.echo(f"MoonPay transaction {_moonpay_id(session)}: {status}. A worker applies it; then "
                   f"GET /onramp/transactions/{session.id}.")


def test_webhook(session: OnrampTransaction, *, status: str, quote_amount: Decimal) -> bytes:
    """The body MoonPay would send for this session (amounts as JSON numbers, every digit kept)."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    data = {
        "id": _moonpay_id(session), "status": status, "externalTransactionId": str(session.id),
        "externalCustomerId": str(session.user_id), "baseCurrencyAmount": "@base@", "quoteCurrencyAmount": "@quote@",
        "baseCurrency": {"code": session.base_currency.lower()},
        "currency": {"code": moonpay.CURRENCY_CODES[session.currency]},
        "cryptoTransactionId": f"0xtest{session.id.hex}" if status == "completed" else None,
        "failureReason": "card_declined" if status == "failed" else None,
        "walletAddress": "test-wallet-address", "createdAt": session.created_at.isoformat(), "updatedAt": now,
    }
    body = json.dumps({"type": EVENT_TYPES.get(status, "transaction_updated"), "data": data,
                       "externalCustomerId": str(session.user_id)})
    body = body.replace('"@base@"', f"{session.base_amount:f}").replace('"@quote@"', f"{quote_amount:f}")
    return body.encode()


def _moonpay_id(session: OnrampTransaction) -> str:
    return session.moonpay_transaction_id or f"mp_test_{session.id.hex[:16]}"
