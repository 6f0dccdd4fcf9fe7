"""Liveness and readiness: /ready answers 200 when every check passes and 503 naming each failing one,
each check proven to fail on its own (stopped Redis, a pending migration, a superuser role, an old
secret, a plain-TCP database in production, a periodic job that stopped running)."""
import datetime as dt

import pytest
from sqlalchemy import text

from wallet_api.extensions import db
from wallet_api.health import service

ALL_CHECKS = {"database", "migrations", "redis", "secrets", "database_privileges", "database_tls", "periodic_jobs",
              "backups"}


def ready(app):
    app.extensions.pop("readiness_cache", None)
    res = app.test_client().get("/ready")
    return res.status_code, res.get_json()


def test_health_is_ok_without_auth_and_carries_version(client):
    res = client.get("/health")
    assert res.status_code == 200
    body = res.get_json()
    assert body["status"] == "ok"
    assert body["uptime_seconds"] >= 0
    assert body["version"]


def test_ready_is_200_when_every_check_passes(app):
    status, body = ready(app)
    assert status == 200, body
    assert set(body["checks"]) == ALL_CHECKS and body["failing"] == [] and body["status"] == "ok"
    assert body["checks"]["database_privileges"]["detail"] == "least privilege"


def test_a_stopped_redis_fails_only_the_redis_check(make_settings_app):
    status, body = ready(make_settings_app(redis_url="redis://127.0.0.1:1/0"))
    assert status == 503 and body["failing"] == ["redis"] and body["status"] == "unavailable"


def test_a_pending_migration_fails_the_migrations_check(app, services):
    import psycopg2

    conn = psycopg2.connect(services.owner_url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        (head,) = cur.fetchone()
        cur.execute("UPDATE alembic_version SET version_num = '0002'")
    try:
        status, body = ready(app)
    finally:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE alembic_version SET version_num = %s", (head,))
        conn.close()
    assert status == 503 and body["failing"] == ["migrations"]
    assert "0002" in body["checks"]["migrations"]["detail"]


def test_a_superuser_or_owner_role_fails_the_privileges_check(make_settings_app, services):
    for url, expected in ((services.superuser_url, "superuser"), (services.owner_url, "owns tables")):
        status, body = ready(make_settings_app(database_url=url))
        assert status == 503 and body["failing"] == ["database_privileges"]
        assert expected in body["checks"]["database_privileges"]["detail"]


def test_a_secret_older_than_90_days_fails_and_one_older_than_60_warns(make_settings_app):
    today = dt.datetime.now(dt.timezone.utc).date()
    warned = make_settings_app(secret_rotation_dates={"JWT_SECRET": today - dt.timedelta(days=61)})
    status, body = ready(warned)
    assert status == 200 and "rotate soon" in body["checks"]["secrets"]["detail"]
    expired = make_settings_app(secret_rotation_dates={"JWT_SECRET": today - dt.timedelta(days=91),
                                                       "MOONPAY_SECRET_KEY": today})
    status, body = ready(expired)
    assert status == 503 and body["failing"] == ["secrets"]
    assert "JWT_SECRET rotated 91 days ago" in body["checks"]["secrets"]["detail"]


def test_a_plain_tcp_database_fails_where_tls_is_required(make_settings_app):
    status, body = ready(make_settings_app(database_tls_required=True))  # the test server speaks plain TCP
    assert status == 503 and body["failing"] == ["database_tls"]
    status, body = ready(make_settings_app(database_tls_required=False))
    assert status == 200 and "not encrypted" in body["checks"]["database_tls"]["detail"]


def test_a_periodic_job_that_stopped_running_fails_the_jobs_check(app, monkeypatch):
    with app.app_context():
        db.session.execute(text(
            "INSERT INTO job_runs (id, job_name, trigger, status, started_at, finished_at) VALUES "
            "(gen_random_uuid(), 'webhook-retry', 'scheduled', 'succeeded', now() - interval '11 minutes', "
            "now() - interval '11 minutes')"))
        db.session.commit()
        db.session.remove()
    monkeypatch.setattr(service, "STARTED", service.time.monotonic() - 3 * 3600)  # up for hours: none never ran
    status, body = ready(app)
    assert status == 503 and body["failing"] == ["periodic_jobs"]
    detail = body["checks"]["periodic_jobs"]["detail"]
    assert "webhook-retry last succeeded 11 min ago" in detail and "wallet-reconciliation never succeeded" in detail


def test_readiness_is_cached_briefly_and_logs_nothing_per_call(app, caplog):
    app.extensions.pop("readiness_cache", None)
    client = app.test_client()
    with caplog.at_level("INFO", logger="alembic"):
        first = client.get("/ready").get_json()
        assert client.get("/ready").get_json() == first
    assert not [r for r in caplog.records if r.name.startswith("alembic")]


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_probes_are_never_rate_limited(make_settings_app, path):
    from wallet_api.config import RateLimits

    app = make_settings_app(ratelimit_enabled=True, rate_limits=RateLimits(wallet_read="1/minute"))
    client = app.test_client()
    assert all(client.get(path).status_code in (200, 503) for _ in range(5))


def test_backups_must_be_configured_recent_and_restore_tested(app, make_settings_app):
    from wallet_api.backups.crypto import generate_key

    status, body = ready(make_settings_app(app_env="production", cors_allowed_origins=("https://a.example",)))
    assert "backups" in body["failing"] and "not configured" in body["checks"]["backups"]["detail"]
    configured = make_settings_app(backup_encryption_key=generate_key()[0])
    status, body = ready(configured)
    assert status == 503 and body["failing"] == ["backups"]
    assert "no successful backup since never" in body["checks"]["backups"]["detail"]
    with app.app_context():
        for job in ("backup", "restore-test"):
            db.session.execute(text(
                "INSERT INTO job_runs (id, job_name, trigger, status, started_at, finished_at) VALUES "
                "(gen_random_uuid(), :j, 'cli', 'succeeded', now(), now())"), {"j": job})
        db.session.commit()
        db.session.remove()
    status, body = ready(configured)
    assert status == 200 and "local disk only" in body["checks"]["backups"]["detail"]
