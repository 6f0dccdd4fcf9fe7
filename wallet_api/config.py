"""Settings read once from the environment, validated all at once.

`load_settings()` declares every variable, then seals: a misconfigured process names every
missing or malformed variable in one error instead of failing on the first, and production
refuses to start at all (see docs/STARTUP_SAFETY.md).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from environs import Env, EnvValidationError
from marshmallow.validate import Length, OneOf, Range
from sqlalchemy.engine import make_url

from wallet_api.backups.crypto import InvalidKey, parse_key
from wallet_api.client_address import IpAllowlist
from wallet_api.secrets_policy import weakness

APP_ENVS = ("development", "test", "production")


class ConfigError(RuntimeError):
    """The environment does not describe a runnable app; `problems` maps variable -> messages."""

    def __init__(self, problems: Mapping[str, list[str]]):
        self.problems = dict(problems)
        lines = [f"  {name}: {'; '.join(msgs)}" for name, msgs in sorted(self.problems.items())]
        super().__init__("Invalid configuration:\n" + "\n".join(lines))


@dataclass(frozen=True)
class RateLimits:
    """Limit strings in flask-limiter notation, one per category of DESIGN.md."""

    auth: str = "5/minute"
    login_failures: str = "10 per 15 minutes"
    admin_emergency: str = "2/minute"
    wallet_write: str = "10/minute"
    wallet_read: str = "30/minute"
    transfers: str = "20/minute"
    onramp: str = "15/minute"
    admin: str = "60/minute"


@dataclass(frozen=True)
class Settings:
    app_env: str
    database_url: str
    redis_url: str
    jwt_secret: str
    jwt_refresh_secret: str
    moonpay_webhook_secret: str
    moonpay_secret_key: str
    migration_database_url: str | None = None
    moonpay_publishable_key: str = "pk_test_placeholder"
    moonpay_api_base_url: str = "https://api.moonpay.com"
    moonpay_widget_base_url: str = "https://buy.moonpay.com"
    cors_allowed_origins: tuple[str, ...] = ()
    webhook_allowed_ips: str = ""
    webhook_ip_allowlist_enforced: bool = False
    trusted_proxy_count: int = 0
    trusted_proxy_cidrs: str = ""
    database_tls_required: bool = False
    # False behind a transaction-mode pooler, where a prepared statement may be on another server
    # connection (wallet_api/prepared_statements.py).
    database_prepared_statements: bool = True
    # False: a rediss:// server's certificate is not verified (Heroku Redis's is self-signed);
    # load_settings then writes `ssl_cert_reqs=none` into redis_url, which every client reads.
    redis_tls_verify: bool = True
    metrics_token: str | None = None
    webhook_signature_tolerance_seconds: int = 300
    webhook_max_body_bytes: int = 64 * 1024
    webhook_stale_after_seconds: int = 600
    webhook_max_retries: int = 5
    max_content_length: int = 1024 * 1024
    access_token_ttl_seconds: int = 15 * 60
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    ledger_lock_timeout_ms: int = 5000
    statement_timeout_ms: int = 15000
    db_pool_size: int = 5
    db_max_overflow: int = 5
    idempotency_key_ttl_hours: int = 24
    ratelimit_enabled: bool = True
    rate_limits: RateLimits = field(default_factory=RateLimits)
    rq_job_timeout_seconds: int = 60
    worker_processes: int = 2
    worker_max_memory_mb: int = 512
    worker_nice: int = 10
    wallet_reconciliation_interval_seconds: int = 15 * 60
    provider_reconciliation_interval_seconds: int = 60 * 60
    webhook_retry_interval_seconds: int = 5 * 60
    reconciliation_job_timeout_seconds: int = 30 * 60
    reconciliation_statement_timeout_ms: int = 10 * 60 * 1000
    provider_reconciliation_lookback_hours: int = 24
    provider_reconciliation_overlap_minutes: int = 15
    alert_webhook_url: str | None = None
    alert_credit_spike_threshold: Decimal = Decimal("1000")
    alert_credit_spike_user_threshold: Decimal = Decimal("500")
    alert_credit_spike_window_minutes: int = 60
    secret_rotation_dates: Mapping[str, dt.date | None] = field(default_factory=dict)
    backup_dir: str = "backups"
    backup_retention_days: int = 30
    log_level: str = "INFO"
    log_json: bool = False
    version: str = "0.1.0"
    backup_encryption_key: str | None = None
    backup_s3_bucket: str | None = None
    backup_s3_prefix: str = "backups/"
    backup_s3_endpoint_url: str | None = None
    backup_s3_region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    backup_job_timeout_seconds: int = 4 * 3600
    backup_pg_bin_dir: str | None = None
    # The operator console's session (wallet_api/admin/console/): idle and absolute lifetimes.
    console_session_idle_minutes: int = 30
    console_session_max_hours: int = 8
    # Delay before retry n of a failed webhook event (1-based); retries beyond the list reuse the last.
    webhook_retry_backoff_seconds: tuple[int, ...] = (60, 300, 900, 1800, 3600)

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def backups_configured(self) -> bool:
        """Backups can run (and the daily job is scheduled): BACKUP_ENCRYPTION_KEY is set."""
        return bool(self.backup_encryption_key)

    @property
    def sqlalchemy_url(self) -> str:
        return normalise_database_url(self.database_url)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


STRICT_SSLMODES = ("require", "verify-ca", "verify-full")


def require_tls(url: str) -> str:
    """The URL with TLS required: no sslmode means `sslmode=require` is added; a weaker one is an error.

    The scheme is kept (`postgres://` stays), so the URL still reads as libpq's: pg_dump and
    psycopg2 take it as it is, and SQLAlchemy gets `Settings.sqlalchemy_url`.
    """
    parsed = make_url(url)
    mode = parsed.query.get("sslmode")
    if mode is None:
        return parsed.update_query_dict({"sslmode": "require"}).render_as_string(hide_password=False)
    if mode not in STRICT_SSLMODES:
        raise ValueError(f"sslmode={mode} does not require TLS; use one of {', '.join(STRICT_SSLMODES)} "
                         "(or DATABASE_TLS_REQUIRED=false on a private network).")
    return url


def without_certificate_check(redis_url: str) -> str:
    """A rediss:// URL whose server certificate is not verified (`ssl_cert_reqs=none`, which redis-py,
    RQ's child processes and the limiter's storage all read from the URL itself); the
    connection is still encrypted. Any other URL is an error: it would silently mean no TLS at all."""
    if not redis_url.startswith("rediss://"):
        raise ValueError("false applies only to a TLS connection: REDIS_URL must start with rediss:// "
                         "(or leave REDIS_TLS_VERIFY unset).")
    if "ssl_cert_reqs=" in redis_url:
        return redis_url
    return redis_url + ("&" if "?" in redis_url else "?") + "ssl_cert_reqs=none"


def normalise_database_url(url: str) -> str:
    """Heroku-style `postgres://` names no SQLAlchemy dialect; pin psycopg2 explicitly."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


ROTATED_SECRETS = ("JWT_SECRET", "JWT_REFRESH_SECRET", "MOONPAY_WEBHOOK_SECRET",
                   "MOONPAY_SECRET_KEY", "DATABASE_PASSWORD")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every variable; raise ConfigError naming all problems."""
    env = _MappingEnv(os.environ if environ is None else environ)
    values = _declare(env)
    problems: dict[str, list[str]] = {}
    try:
        env.seal()
    except EnvValidationError as exc:
        for name, msgs in exc.error_messages.items():
            problems[name] = list(msgs) if isinstance(msgs, (list, tuple)) else [str(msgs)]

    app_env = values["app_env"]
    in_production = app_env == "production"

    def problem(name: str, message: str) -> None:
        problems.setdefault(name, []).append(message)

    if in_production and not values["cors_allowed_origins"]:
        problem("CORS_ALLOWED_ORIGINS", "Required in production (comma-separated origins, never '*').")
    if "*" in (values["cors_allowed_origins"] or []):
        problem("CORS_ALLOWED_ORIGINS", "'*' is not allowed; list origins.")
    if in_production and values["log_level"] == "DEBUG":
        problem("LOG_LEVEL", "DEBUG is refused in production: debug lines may carry request data.")
    if values["backup_s3_bucket"] and not values["backup_encryption_key"]:
        problem("BACKUP_ENCRYPTION_KEY", "Required when BACKUP_S3_BUCKET is set: backups are never stored unencrypted.")
    for name, spec in (("WEBHOOK_ALLOWED_IPS", values["webhook_allowed_ips"]),
                       ("TRUSTED_PROXY_CIDRS", values["trusted_proxy_cidrs"])):
        try:
            IpAllowlist.parse(spec or "")
        except ValueError as exc:
            problem(name, str(exc))
    if values["webhook_ip_allowlist_enforced"] and not (values["webhook_allowed_ips"] or "").strip(",  "):
        problem("WEBHOOK_ALLOWED_IPS", "Empty while WEBHOOK_IP_ALLOWLIST_ENFORCED is on (the production default): "
                                       "every MoonPay webhook would be refused. List MoonPay's source addresses, or "
                                       "set WEBHOOK_IP_ALLOWLIST_ENFORCED=false (the signature is the real control).")
    if not values["redis_tls_verify"] and "REDIS_URL" not in problems:
        try:
            values["redis_url"] = without_certificate_check(values["redis_url"])
        except ValueError as exc:
            problem("REDIS_TLS_VERIFY", str(exc))
    for name in ("DATABASE_URL", "MIGRATION_DATABASE_URL"):
        key = name.lower()
        if values[key] and name not in problems:
            try:
                values[key] = require_tls(values[key]) if values["database_tls_required"] else values[key]
            except ValueError as exc:
                problem(name, str(exc))
    for name, own in (("JWT_SECRET", True), ("JWT_REFRESH_SECRET", True), ("METRICS_TOKEN", True),
                      ("MOONPAY_WEBHOOK_SECRET", False), ("MOONPAY_SECRET_KEY", False)):
        value = values[name.lower()]
        if value and name not in problems and (reason := weakness(value, own=own, strict=in_production)):
            problem(name, reason)
    if problems:
        raise ConfigError(problems)

    rate_limits = RateLimits(**values.pop("rate_limits"))
    values["cors_allowed_origins"] = tuple(values["cors_allowed_origins"] or ())
    for name in _OPTIONAL_STRINGS:
        values[name] = values[name] or None
    values["webhook_retry_backoff_seconds"] = _parse_backoff(values["webhook_retry_backoff_seconds"])
    for name in ("alert_credit_spike_threshold", "alert_credit_spike_user_threshold"):
        values[name] = Decimal(values[name])
    return Settings(rate_limits=rate_limits, **values)


class _MappingEnv(Env):
    """environs reads os.environ; this one reads the mapping it is given (tests, tools).

    An empty value counts as unset, so a copied .env.example with blanks means "use the default".
    """

    def __init__(self, source: Mapping[str, str]):
        super().__init__(eager=False)
        self._source = source

    def _get_value(self, env_key, default):
        value = self._source.get(env_key)
        return default if value is None or value == "" else value


def _declare(env: Env) -> dict:
    nonempty = Length(min=1, error="Must not be empty.")
    positive = Range(min=1, error="Must be a positive integer.")
    # Missing means production: a deploy that forgets APP_ENV gets every production check, never none.
    app_env = env.str("APP_ENV", "production", validate=OneOf(APP_ENVS))
    in_production = app_env == "production"
    defaults = Settings.__dataclass_fields__
    limits = RateLimits()

    def default(name):
        return defaults[name].default

    values = dict(
        app_env=app_env,
        database_url=env.str("DATABASE_URL", validate=_url_scheme("postgres", "postgresql",
                                                                  "postgresql+psycopg2")),
        redis_url=env.str("REDIS_URL", validate=_url_scheme("redis", "rediss", "unix")),
        redis_tls_verify=env.bool("REDIS_TLS_VERIFY", True),
        migration_database_url=env.str("MIGRATION_DATABASE_URL", "", validate=_url_scheme(
            "postgres", "postgresql", "postgresql+psycopg2")),
        jwt_secret=env.str("JWT_SECRET", validate=nonempty),
        jwt_refresh_secret=env.str("JWT_REFRESH_SECRET", validate=nonempty),
        moonpay_webhook_secret=env.str("MOONPAY_WEBHOOK_SECRET", validate=nonempty),
        moonpay_secret_key=env.str("MOONPAY_SECRET_KEY", validate=nonempty),
        moonpay_publishable_key=env.str("MOONPAY_PUBLISHABLE_KEY", default("moonpay_publishable_key")),
        moonpay_api_base_url=env.str("MOONPAY_API_BASE_URL", default("moonpay_api_base_url"),
                                     validate=_url_scheme("http", "https")),
        moonpay_widget_base_url=env.str("MOONPAY_WIDGET_BASE_URL", default("moonpay_widget_base_url"),
                                        validate=_url_scheme("http", "https")),
        cors_allowed_origins=env.list("CORS_ALLOWED_ORIGINS", []),
        webhook_allowed_ips=env.str("WEBHOOK_ALLOWED_IPS", ""),
        webhook_ip_allowlist_enforced=env.bool("WEBHOOK_IP_ALLOWLIST_ENFORCED", in_production),
        trusted_proxy_count=env.int("TRUSTED_PROXY_COUNT", 0, validate=Range(min=0, max=10)),
        trusted_proxy_cidrs=env.str("TRUSTED_PROXY_CIDRS", ""),
        database_tls_required=env.bool("DATABASE_TLS_REQUIRED", in_production),
        database_prepared_statements=env.bool("DATABASE_PREPARED_STATEMENTS", True),
        metrics_token=env.str("METRICS_TOKEN", ""),
        webhook_signature_tolerance_seconds=env.int("WEBHOOK_SIGNATURE_TOLERANCE_SECONDS", 300,
                                                    validate=positive),
        webhook_max_body_bytes=env.int("WEBHOOK_MAX_BODY_BYTES", default("webhook_max_body_bytes"),
                                       validate=positive),
        webhook_stale_after_seconds=env.int("WEBHOOK_STALE_AFTER_SECONDS", 600, validate=positive),
        webhook_max_retries=env.int("WEBHOOK_MAX_RETRIES", 5, validate=positive),
        max_content_length=env.int("MAX_CONTENT_LENGTH", default("max_content_length"), validate=positive),
        access_token_ttl_seconds=env.int("ACCESS_TOKEN_TTL_SECONDS", 900, validate=positive),
        refresh_token_ttl_seconds=env.int("REFRESH_TOKEN_TTL_SECONDS", default("refresh_token_ttl_seconds"),
                                          validate=positive),
        ledger_lock_timeout_ms=env.int("LEDGER_LOCK_TIMEOUT_MS", 5000, validate=positive),
        statement_timeout_ms=env.int("STATEMENT_TIMEOUT_MS", 15000, validate=positive),
        db_pool_size=env.int("DB_POOL_SIZE", 5, validate=positive),
        db_max_overflow=env.int("DB_MAX_OVERFLOW", 5, validate=Range(min=0)),
        idempotency_key_ttl_hours=env.int("IDEMPOTENCY_KEY_TTL_HOURS", 24, validate=positive),
        ratelimit_enabled=env.bool("RATELIMIT_ENABLED", True),
        rate_limits={
            name: env.str(f"RATELIMIT_{name.upper()}", getattr(limits, name), validate=_rate_limit)
            for name in RateLimits.__dataclass_fields__
        },
        rq_job_timeout_seconds=env.int("RQ_JOB_TIMEOUT_SECONDS", 60, validate=positive),
        worker_processes=env.int("WORKER_PROCESSES", default("worker_processes"), validate=Range(min=1, max=64)),
        worker_max_memory_mb=env.int("WORKER_MAX_MEMORY_MB", default("worker_max_memory_mb"),
                                     validate=Range(min=64)),
        worker_nice=env.int("WORKER_NICE", default("worker_nice"), validate=Range(min=0, max=19)),
        wallet_reconciliation_interval_seconds=env.int("WALLET_RECONCILIATION_INTERVAL_SECONDS", 900,
                                                       validate=positive),
        provider_reconciliation_interval_seconds=env.int("PROVIDER_RECONCILIATION_INTERVAL_SECONDS", 3600,
                                                         validate=positive),
        webhook_retry_interval_seconds=env.int("WEBHOOK_RETRY_INTERVAL_SECONDS", 300, validate=positive),
        reconciliation_job_timeout_seconds=env.int("RECONCILIATION_JOB_TIMEOUT_SECONDS",
                                                   default("reconciliation_job_timeout_seconds"), validate=positive),
        reconciliation_statement_timeout_ms=env.int("RECONCILIATION_STATEMENT_TIMEOUT_MS",
                                                    default("reconciliation_statement_timeout_ms"), validate=positive),
        provider_reconciliation_lookback_hours=env.int("PROVIDER_RECONCILIATION_LOOKBACK_HOURS", 24,
                                                       validate=positive),
        provider_reconciliation_overlap_minutes=env.int("PROVIDER_RECONCILIATION_OVERLAP_MINUTES", 15,
                                                        validate=Range(min=0)),
        alert_webhook_url=env.str("ALERT_WEBHOOK_URL", "", validate=_url_scheme("http", "https")),
        alert_credit_spike_threshold=env.str("ALERT_CREDIT_SPIKE_THRESHOLD", "1000", validate=_positive_decimal),
        alert_credit_spike_user_threshold=env.str("ALERT_CREDIT_SPIKE_USER_THRESHOLD", "500",
                                                  validate=_positive_decimal),
        alert_credit_spike_window_minutes=env.int("ALERT_CREDIT_SPIKE_WINDOW_MINUTES", 60, validate=positive),
        secret_rotation_dates={
            name: env.date(f"{name}_ROTATION_DATE", None) for name in ROTATED_SECRETS
        },
        backup_dir=env.str("BACKUP_DIR", "backups"),
        backup_retention_days=env.int("BACKUP_RETENTION_DAYS", 30, validate=positive),
        log_level=env.str("LOG_LEVEL", "INFO", validate=OneOf(["DEBUG", "INFO", "WARNING", "ERROR"])),
        log_json=env.bool("LOG_JSON", in_production),
        backup_encryption_key=env.str("BACKUP_ENCRYPTION_KEY", "", validate=_backup_key),
        backup_s3_bucket=env.str("BACKUP_S3_BUCKET", ""),
        backup_s3_prefix=env.str("BACKUP_S3_PREFIX", default("backup_s3_prefix"), validate=_s3_prefix),
        backup_s3_endpoint_url=env.str("BACKUP_S3_ENDPOINT_URL", "", validate=_url_scheme("http", "https")),
        backup_s3_region=env.str("BACKUP_S3_REGION", ""),
        aws_access_key_id=env.str("AWS_ACCESS_KEY_ID", ""),
        aws_secret_access_key=env.str("AWS_SECRET_ACCESS_KEY", ""),
        backup_job_timeout_seconds=env.int("BACKUP_JOB_TIMEOUT_SECONDS", default("backup_job_timeout_seconds"),
                                           validate=positive),
        backup_pg_bin_dir=env.str("BACKUP_PG_BIN_DIR", ""),
        console_session_idle_minutes=env.int("CONSOLE_SESSION_IDLE_MINUTES", 30,
                                             validate=Range(min=1, max=24 * 60)),
        console_session_max_hours=env.int("CONSOLE_SESSION_MAX_HOURS", 8, validate=Range(min=1, max=24)),
        webhook_retry_backoff_seconds=env.str("WEBHOOK_RETRY_BACKOFF_SECONDS", ",".join(
            map(str, default("webhook_retry_backoff_seconds"))), validate=_backoff),
    )
    return values


# Optional settings whose unset (empty) value is None.
# Set or None: an empty value is no value.
_OPTIONAL_STRINGS = ("alert_webhook_url", "migration_database_url", "metrics_token", "backup_encryption_key",
                     "backup_s3_bucket", "backup_s3_endpoint_url", "backup_s3_region", "aws_access_key_id",
                     "aws_secret_access_key", "backup_pg_bin_dir")


def _backup_key(value: str) -> bool:
    from marshmallow import ValidationError

    if value:
        try:
            parse_key(value)
        except InvalidKey as exc:  # its message describes the format and never repeats the value
            raise ValidationError(str(exc)) from None
    return True


def _s3_prefix(value: str) -> bool:
    from marshmallow import ValidationError

    if value.startswith("/") or (value and not value.endswith("/")):
        raise ValidationError("A key prefix such as 'backups/' or 'prod/wallet/': no leading '/', ending with '/'.")
    return True


def _url_scheme(*schemes: str):
    def validate(value: str) -> bool:
        from marshmallow import ValidationError

        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in schemes:
            raise ValidationError(f"Must be a URL starting with one of: {', '.join(s + '://' for s in schemes)}")
        return True

    return validate


def _positive_decimal(value: str) -> bool:
    from marshmallow import ValidationError

    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValidationError("Must be a decimal number such as 1000 or 2500.50.") from None
    if not number.is_finite() or number <= 0:
        raise ValidationError("Must be a positive decimal number.")
    return True


def _parse_backoff(value: str) -> tuple[int, ...]:
    """Retry delays in seconds from "60,300,900": 1 to 20 whole numbers, each from 1 s to a week."""
    try:
        delays = tuple(int(part) for part in value.split(","))
    except ValueError:
        delays = ()
    if not 1 <= len(delays) <= 20 or any(not 1 <= delay <= 7 * 24 * 3600 for delay in delays):
        raise ValueError("Must be 1 to 20 comma-separated delays in seconds, each from 1 to 604800, "
                         "such as 60,300,900,1800,3600.")
    return delays


def _backoff(value: str) -> bool:
    from marshmallow import ValidationError

    try:
        _parse_backoff(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    return True


def _rate_limit(value: str) -> bool:
    from limits import parse_many
    from marshmallow import ValidationError

    try:
        parse_many(value)
    except ValueError as exc:
        raise ValidationError(f"Not a rate limit like '10/minute': {exc}") from None
    return True
