"""The URLs Heroku's add-ons hand the app work as they are: `postgres://` database URLs (with TLS
required in production), and `rediss://` Redis with a self-signed certificate once the operator
says REDIS_TLS_VERIFY=false, which is refused for a Redis that speaks no TLS."""
import pytest
from psycopg2.extensions import parse_dsn

from tests.app.test_config import GOOD
from wallet_api.config import ConfigError, load_settings

HEROKU_POSTGRES = "postgres://u1a2:p%40ss@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d9f8"
HEROKU_REDIS = "rediss://:p4ss@ec2-5-6-7-8.compute-1.amazonaws.com:21570"


def test_heroku_postgres_urls_get_tls_and_stay_readable_by_libpq():
    settings = load_settings({**GOOD, "DATABASE_URL": HEROKU_POSTGRES, "MIGRATION_DATABASE_URL": HEROKU_POSTGRES})
    for url in (settings.database_url, settings.migration_database_url):
        # pg_dump (bin/backup) and psycopg2 read this URL as libpq does: no SQLAlchemy dialect in it.
        params = parse_dsn(url)
        assert (params["host"], params["dbname"], params["password"], params["sslmode"]) == (
            "ec2-1-2-3-4.compute-1.amazonaws.com", "d9f8", "p@ss", "require")
    assert settings.sqlalchemy_url == ("postgresql+psycopg2://u1a2:p%40ss@ec2-1-2-3-4.compute-1.amazonaws.com:5432/"
                                       "d9f8?sslmode=require")


def test_a_stricter_sslmode_given_in_the_url_is_kept():
    settings = load_settings({**GOOD, "DATABASE_URL": HEROKU_POSTGRES + "?sslmode=verify-full"})
    assert parse_dsn(settings.database_url)["sslmode"] == "verify-full"


def test_redis_certificates_are_verified_unless_said_otherwise():
    settings = load_settings({**GOOD, "REDIS_URL": HEROKU_REDIS})
    assert settings.redis_tls_verify is True
    assert settings.redis_url == HEROKU_REDIS


@pytest.mark.parametrize("url, expected", [
    (HEROKU_REDIS, HEROKU_REDIS + "?ssl_cert_reqs=none"),
    (HEROKU_REDIS + "/2?health_check_interval=10", HEROKU_REDIS + "/2?health_check_interval=10&ssl_cert_reqs=none"),
])
def test_redis_tls_verify_false_accepts_any_certificate_on_every_client_of_the_url(url, expected):
    settings = load_settings({**GOOD, "REDIS_URL": url, "REDIS_TLS_VERIFY": "false"})
    assert settings.redis_tls_verify is False
    assert settings.redis_url == expected


@pytest.mark.parametrize("url", ["redis://cache.internal:6379/0", "unix:///run/redis.sock"])
def test_redis_tls_verify_false_is_refused_for_a_redis_without_tls(url):
    with pytest.raises(ConfigError) as refused:
        load_settings({**GOOD, "REDIS_URL": url, "REDIS_TLS_VERIFY": "false"})
    assert list(refused.value.problems) == ["REDIS_TLS_VERIFY"]
    assert "rediss://" in str(refused.value)


def test_a_malformed_redis_tls_verify_is_named():
    with pytest.raises(ConfigError) as refused:
        load_settings({**GOOD, "REDIS_URL": HEROKU_REDIS, "REDIS_TLS_VERIFY": "sometimes"})
    assert list(refused.value.problems) == ["REDIS_TLS_VERIFY"]
