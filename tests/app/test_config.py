"""Startup safety: a process with a bad environment refuses to start and names every problem."""
import pytest

from wallet_api.config import ConfigError, load_settings, normalise_database_url

GOOD = {
    "APP_ENV": "production",
    "DATABASE_URL": "postgres://app:pw@db.internal:5432/wallet",
    "REDIS_URL": "rediss://cache.internal:6380/0",
    "JWT_SECRET": "Qm9vGv3kTfN1x8rZpL2wYcD7hS4aE6uJ0bRtWqKz",
    "JWT_REFRESH_SECRET": "Xr7Lp2VwN9cKq4ZbT1mHs8FyD3jG6uRa0eWtYiOk",
    "MOONPAY_WEBHOOK_SECRET": "wk_live_7Hq2Zm9RtX4cVb1N",
    "MOONPAY_SECRET_KEY": "sk_live_K3p8Wq1Zr6Tx9Vm2",
    "CORS_ALLOWED_ORIGINS": "https://app.example.com,https://admin.example.com",
    "WEBHOOK_ALLOWED_IPS": "52.18.0.0/16",
}
REQUIRED = ["DATABASE_URL", "REDIS_URL", "JWT_SECRET", "JWT_REFRESH_SECRET", "MOONPAY_WEBHOOK_SECRET",
            "MOONPAY_SECRET_KEY", "CORS_ALLOWED_ORIGINS", "WEBHOOK_ALLOWED_IPS"]


def test_a_complete_production_environment_loads():
    settings = load_settings(GOOD)
    assert settings.is_production
    assert settings.sqlalchemy_url.startswith("postgresql+psycopg2://")
    assert settings.sqlalchemy_url.endswith("?sslmode=require")  # TLS to the database, unless said otherwise
    assert settings.cors_allowed_origins == ("https://app.example.com", "https://admin.example.com")
    assert settings.webhook_ip_allowlist_enforced is True
    assert settings.log_json is True


def test_an_empty_production_environment_names_every_missing_variable_at_once():
    with pytest.raises(ConfigError) as info:
        load_settings({"APP_ENV": "production"})
    assert set(info.value.problems) == set(REQUIRED)
    for name in REQUIRED:
        assert name in str(info.value)


@pytest.mark.parametrize("name", REQUIRED)
def test_each_required_variable_is_named_when_missing(name):
    env = {k: v for k, v in GOOD.items() if k != name}
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert list(info.value.problems) == [name]


@pytest.mark.parametrize("name, value", [
    ("JWT_SECRET", "too-short"),
    ("JWT_REFRESH_SECRET", "x" * 31),
    ("DATABASE_URL", "mysql://db/wallet"),
    ("REDIS_URL", "http://cache"),
    ("APP_ENV", "staging"),
    ("TRUSTED_PROXY_COUNT", "many"),
    ("RATELIMIT_AUTH", "lots"),
    ("CORS_ALLOWED_ORIGINS", "*"),
    ("WEBHOOK_ALLOWED_IPS", "10.0.0.0/33"),
    ("JWT_SECRET_ROTATION_DATE", "yesterday"),
    ("LEDGER_LOCK_TIMEOUT_MS", "0"),
])
def test_malformed_values_are_named(name, value):
    with pytest.raises(ConfigError) as info:
        load_settings({**GOOD, name: value})
    assert name in info.value.problems


def test_several_problems_are_reported_together():
    with pytest.raises(ConfigError) as info:
        load_settings({**GOOD, "JWT_SECRET": "short", "REDIS_URL": "", "TRUSTED_PROXY_COUNT": "x"})
    assert {"JWT_SECRET", "REDIS_URL", "TRUSTED_PROXY_COUNT"} <= set(info.value.problems)


def test_secret_values_never_appear_in_the_error():
    secret = "s3cr3t-but-too-short"
    with pytest.raises(ConfigError) as info:
        load_settings({**GOOD, "JWT_SECRET": secret})
    assert secret not in str(info.value)


def test_development_does_not_require_cors_origins_or_the_production_checks():
    env = {k: v for k, v in GOOD.items() if k not in ("CORS_ALLOWED_ORIGINS", "WEBHOOK_ALLOWED_IPS")}
    settings = load_settings({**env, "APP_ENV": "development", "JWT_SECRET": "a" * 32, "LOG_LEVEL": "DEBUG",
                              "DATABASE_URL": "postgresql://u@localhost/wallet?sslmode=disable"})
    assert settings.app_env == "development" and settings.webhook_ip_allowlist_enforced is False
    assert settings.database_tls_required is False and settings.log_level == "DEBUG"


def test_a_missing_app_env_means_production_never_development():
    settings = load_settings({k: v for k, v in GOOD.items() if k != "APP_ENV"})
    assert settings.is_production and settings.database_tls_required and settings.webhook_ip_allowlist_enforced
    with pytest.raises(ConfigError) as info:
        load_settings({k: v for k, v in GOOD.items() if k not in ("APP_ENV", "CORS_ALLOWED_ORIGINS")})
    assert list(info.value.problems) == ["CORS_ALLOWED_ORIGINS"]


@pytest.mark.parametrize("change, refused", [
    ({"LOG_LEVEL": "DEBUG"}, "LOG_LEVEL"),
    ({"DATABASE_URL": "postgres://app:pw@db.internal/wallet?sslmode=disable"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgres://app:pw@db.internal/wallet?sslmode=prefer"}, "DATABASE_URL"),
    ({"MIGRATION_DATABASE_URL": "postgres://owner:pw@db.internal/wallet?sslmode=allow"}, "MIGRATION_DATABASE_URL"),
    ({"WEBHOOK_ALLOWED_IPS": ""}, "WEBHOOK_ALLOWED_IPS"),
    ({"TRUSTED_PROXY_CIDRS": "10.0.0.0/33"}, "TRUSTED_PROXY_CIDRS"),
    ({"JWT_SECRET": "a" * 40}, "JWT_SECRET"),
    ({"JWT_SECRET": "change-me-change-me-change-me-change-me"}, "JWT_SECRET"),
    ({"MOONPAY_WEBHOOK_SECRET": "wk_live_x"}, "MOONPAY_WEBHOOK_SECRET"),
    ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN"),
])
def test_production_refuses_what_development_tolerates(change, refused):
    with pytest.raises(ConfigError) as info:
        load_settings({**GOOD, **change})
    assert list(info.value.problems) == [refused]


@pytest.mark.parametrize("url, expected", [
    ("postgres://app:pw@db/wallet", "postgresql+psycopg2://app:pw@db/wallet?sslmode=require"),
    ("postgres://app:pw@db/wallet?sslmode=verify-full", "postgresql+psycopg2://app:pw@db/wallet?sslmode=verify-full"),
])
def test_production_database_urls_require_tls(url, expected):
    assert load_settings({**GOOD, "DATABASE_URL": url}).sqlalchemy_url == expected


def test_tls_to_the_database_may_be_waived_explicitly_for_a_private_network():
    url = "postgres://app:pw@db.internal/wallet?sslmode=disable"
    settings = load_settings({**GOOD, "DATABASE_URL": url, "DATABASE_TLS_REQUIRED": "false"})
    assert settings.sqlalchemy_url.endswith("sslmode=disable")


def test_the_webhook_allowlist_may_be_switched_off_explicitly():
    settings = load_settings({**GOOD, "WEBHOOK_ALLOWED_IPS": "", "WEBHOOK_IP_ALLOWLIST_ENFORCED": "false"})
    assert settings.webhook_ip_allowlist_enforced is False


def test_rate_limits_and_rotation_dates_are_read():
    settings = load_settings({**GOOD, "RATELIMIT_TRANSFERS": "3/second", "JWT_SECRET_ROTATION_DATE": "2026-10-01"})
    assert settings.rate_limits.transfers == "3/second"
    assert settings.rate_limits.auth == "5/minute"
    assert str(settings.secret_rotation_dates["JWT_SECRET"]) == "2026-10-01"


def test_heroku_style_database_urls_are_normalised():
    assert normalise_database_url("postgres://u:p@h/d") == "postgresql+psycopg2://u:p@h/d"
    assert normalise_database_url("postgresql://u@h/d") == "postgresql+psycopg2://u@h/d"


def test_wsgi_refuses_to_start_in_production_without_secrets(tmp_path):
    import os
    import subprocess
    import sys

    env = {"PATH": os.environ["PATH"], "APP_ENV": "production", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", "import wsgi"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.returncode != 0
    for name in REQUIRED:
        assert name in proc.stderr


def test_env_example_documents_every_variable_and_loads_once_filled(tmp_path):
    import pathlib

    read = set()

    class Recording(dict):
        def get(self, key, default=None):
            read.add(key)
            return super().get(key, default)

    load_settings(Recording(GOOD))
    example = (pathlib.Path(__file__).resolve().parents[2] / ".env.example").read_text()
    documented = {line.split("=", 1)[0] for line in example.splitlines() if "=" in line and not line.startswith("#")}
    assert read - documented == set()
    filled = {k: v for k, v in (line.split("=", 1) for line in example.splitlines()
                                if "=" in line and not line.startswith("#"))}
    filled.update({k: GOOD[k] for k in ("JWT_SECRET", "JWT_REFRESH_SECRET", "MOONPAY_WEBHOOK_SECRET",
                                        "MOONPAY_SECRET_KEY", "WEBHOOK_ALLOWED_IPS")})
    assert load_settings(filled).is_production


def test_the_webhook_retry_backoff_defaults_to_minutes_and_may_be_shortened():
    assert load_settings(GOOD).webhook_retry_backoff_seconds == (60, 300, 900, 1800, 3600)
    assert load_settings({**GOOD, "WEBHOOK_RETRY_BACKOFF_SECONDS": "2, 5"}).webhook_retry_backoff_seconds == (2, 5)


@pytest.mark.parametrize("value", ["0", "a,b", "60,-1", ",", "60,,300", "1.5", ",".join(["1"] * 21), "604801"])
def test_a_malformed_webhook_retry_backoff_is_named(value):
    with pytest.raises(ConfigError) as info:
        load_settings({**GOOD, "WEBHOOK_RETRY_BACKOFF_SECONDS": value})
    assert list(info.value.problems) == ["WEBHOOK_RETRY_BACKOFF_SECONDS"]
