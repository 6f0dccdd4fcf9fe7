"""The operator console: server-rendered pages at /console for ADMIN users.

Operators answer "is money right, and what is stuck?" here without a bearer token: an overview
(readiness, open alerts, the dead letter queue, flagged wallets, queue depths, the jobs), alerts,
the DLQ, wallets and their ledgers, jobs and their runs, and the admin access log. The console is
a face on the admin API's services, never a second implementation: every action calls the same
service function as its admin route and is recorded in the same access log.

Plain Flask blueprints with Jinja templates (autoescaped) and one stylesheet; no JavaScript, so
every page works without it and a Content-Security-Policy without 'unsafe-inline' holds. Not part
of the OpenAPI document. Sessions: `session.py`; cookie key, CSRF and headers: `security.py`.
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

from flask import Flask, Request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from wallet_api.admin.console import views
from wallet_api.admin.console.security import csrf, session_key
from wallet_api.wallets.amounts import format_money


def init_app(app: Flask) -> None:
    """Configure the console's session cookie and CSRF tokens, and register its blueprints."""
    settings = app.config["SETTINGS"]
    app.config.update(
        SECRET_KEY=session_key(settings.jwt_secret),
        SESSION_COOKIE_NAME="wallet_console",
        SESSION_COOKIE_PATH="/console",   # never sent to the JSON API
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.is_production,
        SESSION_REFRESH_EACH_REQUEST=False,  # the console re-sends the cookie itself (last seen)
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=settings.console_session_max_hours),
        # Only the console's hook checks tokens: the API's bearer tokens are not sent by a browser on its own.
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=settings.console_session_max_hours * 3600,
    )
    app.session_interface = ConsoleSessionInterface()
    csrf.init_app(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(views.assets)
    app.add_template_filter(when, "when")
    app.add_template_filter(money, "money")


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, opened without building its signer when there is no cookie.

    Flask opens a session for every request, building the cookie's serializer and signer first. Only
    the console's pages get the cookie (its path is /console), so every API request would pay for a
    signer it never uses: without the cookie the session is empty, as Flask's own would be.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def when(value: dt.datetime | None) -> str:
    """A time in UTC, to the second."""
    if value is None:
        return "—"
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def money(amount: Decimal | None, currency: str) -> str:
    """An amount exactly as the API writes it (wallets.amounts.format_money, the MoneyField's rule)."""
    formatted = format_money(amount, currency)
    return "—" if formatted is None else formatted
