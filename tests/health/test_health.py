def test_health_is_ok_without_auth_and_carries_version(client):
    res = client.get("/health")
    assert res.status_code == 200
    body = res.get_json()
    assert body["status"] == "ok"
    assert body["uptime_seconds"] >= 0
    assert body["version"]


def test_ready_checks_database_migrations_and_redis(client):
    res = client.get("/ready")
    assert res.status_code == 200, res.get_json()
    checks = res.get_json()["checks"]
    assert {name: c["ok"] for name, c in checks.items()} == {"database": True, "migrations": True, "redis": True}
