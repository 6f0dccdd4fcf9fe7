"""The MoonPay REST API as configured for this process (used by provider reconciliation)."""
from __future__ import annotations

from flask import current_app

from wallet_api.config import Settings
from wallet_api.onramp.moonpay_client import MoonPayApi, MoonPayClient


def moonpay_api(settings: Settings | None = None) -> MoonPayApi:
    """A MoonPay client for MOONPAY_API_BASE_URL, authenticated with MOONPAY_SECRET_KEY."""
    settings = settings or current_app.config["SETTINGS"]
    return MoonPayClient(settings.moonpay_api_base_url, settings.moonpay_secret_key)
