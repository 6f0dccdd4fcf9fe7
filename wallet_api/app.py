"""The application factory: one validated Settings object in, a configured Flask app out."""
from __future__ import annotations

import datetime as dt
import importlib

from flask import Flask
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from wallet_api import metrics_export
from wallet_api.client_address import IpAllowlist, TrustedProxyClientAddress
from wallet_api.config import Settings, load_settings
from wallet_api.database import check_on_checkout, name_connections
from wallet_api.errors import register_error_handlers
from wallet_api.extensions import api, db, jwt, limiter, migrate
from wallet_api.logging import REQUEST_ID_HEADER, configure_logging, init_request_logging
from wallet_api.metrics import init_request_metrics
from wallet_api.openapi import ErrorResponses
from wallet_api.queues import REQUEST_REDIS_TIMEOUT_SECONDS
from wallet_api.ratelimit import RATE_LIMIT_RETRY_AFTER
from wallet_api.ratelimit import STRATEGY as RATE_LIMIT_STRATEGY
from wallet_api.request_parsing import JsonProvider, read_chunked_body
from wallet_api.security import init_security

# Each domain's routes module exposes `blueprints`; order fixes the order of the OpenAPI tags.
ROUTE_MODULES = (
    "wallet_api.health.routes",
    "wallet_api.auth.routes",
    "wallet_api.wallets.routes",
    "wallet_api.onramp.routes",
    "wallet_api.admin.routes",
)
# Each module's `SOURCES`: gauges read when /metrics is scraped (wallet_api/metrics_export.py).
METRIC_SOURCE_MODULES = ("wallet_api.health.gauges", "wallet_api.onramp.gauges")
# Server-rendered pages (plain Flask blueprints, outside the OpenAPI document): each module's init_app(app).
PAGE_MODULES = ("wallet_api.admin.console",)

EXPOSED_HEADERS = [REQUEST_ID_HEADER, "X-RateLimit-Limit", "X-RateLimit-Remaining",
                   "X-RateLimit-Reset", "Retry-After", "Idempotent-Replayed"]


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)

    app = Flask(__name__)
    app.json = JsonProvider(app)
    app.config.update(_flask_config(settings))
    if settings.trusted_proxy_count:
        # Only the hops we run ourselves may set the client address; see docs/SECRETS_AND_ACCESS_CONTROL.md.
        n = settings.trusted_proxy_count
        app.wsgi_app = TrustedProxyClientAddress(ProxyFix(app.wsgi_app, x_for=0, x_proto=n, x_host=n), n,
                                                 proxies=IpAllowlist.parse(settings.trusted_proxy_cidrs))
    init_request_metrics(app)  # first: it times requests another hook answers; it only reads responses
    init_security(app, settings)  # its response hook must run after every extension's
    app.before_request(read_chunked_body)

    import wallet_api.models  # noqa: F401  (register every table)

    db.init_app(app)
    with app.app_context():
        for engine in db.engines.values():
            check_on_checkout(engine)
            name_connections(engine, "wallet_api")
    migrate.init_app(app, db, directory=_migrations_dir())
    jwt.init_app(app)
    limiter.init_app(app)
    api.init_app(app, spec_kwargs={"extra_plugins": [ErrorResponses(app)]})
    from wallet_api import api_docs

    app.register_blueprint(api_docs.bp)
    CORS(app, origins=list(settings.cors_allowed_origins), expose_headers=EXPOSED_HEADERS,
         allow_headers=["Authorization", "Content-Type", "Idempotency-Key", REQUEST_ID_HEADER])
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer",
                                                       "bearerFormat": "JWT"})
    api.spec.components.security_scheme("metricsToken", {"type": "http", "scheme": "bearer",
                                                         "description": "METRICS_TOKEN, when it is set"})

    init_request_logging(app)
    register_error_handlers(app)
    from wallet_api.auth.tokens import register_jwt_handlers

    register_jwt_handlers(jwt)
    for module in ROUTE_MODULES:
        for blueprint in importlib.import_module(module).blueprints:
            api.register_blueprint(blueprint)
    for module in PAGE_MODULES:
        importlib.import_module(module).init_app(app)
    metrics_export.init_app(app, [source for module in METRIC_SOURCE_MODULES
                                  for source in importlib.import_module(module).SOURCES])

    from wallet_api.cli import register_cli

    register_cli(app)
    return app


def _flask_config(settings: Settings) -> dict:
    return {
        "SETTINGS": settings,
        "TESTING": settings.app_env == "test",
        "PROPAGATE_EXCEPTIONS": False,
        "MAX_CONTENT_LENGTH": settings.max_content_length,
        "SQLALCHEMY_DATABASE_URI": settings.sqlalchemy_url,
        "SQLALCHEMY_ENGINE_OPTIONS": {
            # No pool_pre_ping (a round trip per checkout): see wallet_api/database.py.
            "pool_size": settings.db_pool_size,
            "max_overflow": settings.db_max_overflow,
            # Statements are logged on errors; their parameters are user data (emails, references).
            "hide_parameters": True,
            "connect_args": {
                "options": f"-c statement_timeout={settings.statement_timeout_ms}",
            },
        },
        "JWT_SECRET_KEY": settings.jwt_secret,
        "JWT_ACCESS_TOKEN_EXPIRES": dt.timedelta(seconds=settings.access_token_ttl_seconds),
        "JWT_TOKEN_LOCATION": ["headers"],
        "JWT_ALGORITHM": "HS256",
        "RATELIMIT_ENABLED": settings.ratelimit_enabled,
        "RATELIMIT_STORAGE_URI": settings.redis_url,
        "RATELIMIT_HEADERS_ENABLED": True,
        "RATELIMIT_HEADER_RETRY_AFTER": RATE_LIMIT_RETRY_AFTER,
        "RATELIMIT_KEY_PREFIX": "wallet_api:ratelimit",
        "RATELIMIT_STRATEGY": RATE_LIMIT_STRATEGY,
        # Redis down or hung: every limit is counted in the process's memory until Redis answers again
        # (each worker counts alone meanwhile), instead of a 500 on every limited request, or a
        # request waiting on a socket with no timeout. See docs/RATE_LIMITING.md.
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_SWALLOW_ERRORS": True,
        "RATELIMIT_STORAGE_OPTIONS": {"socket_connect_timeout": REQUEST_REDIS_TIMEOUT_SECONDS,
                                      "socket_timeout": REQUEST_REDIS_TIMEOUT_SECONDS},
        "API_TITLE": "Wallet Platform API",
        "API_VERSION": settings.version,
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "API_SPEC_OPTIONS": {
            "info": {"description": "Custodial wallets on a double-entry ledger. "
                                    "Amounts are decimal strings; errors use one JSON envelope."},
        },
    }


def _migrations_dir() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parent.parent / "migrations")
