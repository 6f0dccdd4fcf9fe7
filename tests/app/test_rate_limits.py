"""Rate limits are counted in real Redis, per IP for anonymous calls and per user when authenticated."""


def test_auth_endpoints_allow_five_per_minute_then_429_with_headers(make_settings_app):
    app = make_settings_app(ratelimit_enabled=True)
    c = app.test_client()
    statuses = []
    for _ in range(6):
        res = c.post("/auth/login", json={"email": "x@example.com", "password": "whatever"},
                     environ_base={"REMOTE_ADDR": "203.0.113.7"})
        statuses.append(res.status_code)
    assert statuses == [401] * 5 + [429]
    assert res.get_json()["code"] == 429
    assert int(res.headers["Retry-After"]) > 0
    assert res.headers["X-RateLimit-Limit"] == "5"
    assert res.headers["X-RateLimit-Remaining"] == "0"
    other_ip = c.post("/auth/login", json={"email": "x@example.com", "password": "whatever"},
                      environ_base={"REMOTE_ADDR": "203.0.113.8"})
    assert other_ip.status_code == 401


def test_limits_come_from_settings(make_settings_app):
    from wallet_api.config import RateLimits

    app = make_settings_app(ratelimit_enabled=True, rate_limits=RateLimits(auth="2/minute"))
    c = app.test_client()
    codes = [c.post("/auth/login", json={"email": "x@example.com", "password": "p"}).status_code for _ in range(3)]
    assert codes == [401, 401, 429]


def test_health_is_never_rate_limited(make_settings_app):
    app = make_settings_app(ratelimit_enabled=True)
    c = app.test_client()
    assert all(c.get("/health").status_code == 200 for _ in range(50))
