"""The client address used by rate limits and the webhook allowlist comes only from trusted hops."""
import pytest
from flask import Blueprint, request


@pytest.fixture
def echo_app(make_settings_app):
    def build(trusted_proxy_count, trusted_proxy_cidrs=""):
        app = make_settings_app(trusted_proxy_count=trusted_proxy_count, trusted_proxy_cidrs=trusted_proxy_cidrs)
        bp = Blueprint("echo_ip", __name__)
        bp.add_url_rule("/echo-ip", "echo", lambda: request.remote_addr or "")
        bp.add_url_rule("/echo-scheme", "scheme", lambda: request.scheme)
        app.register_blueprint(bp)
        return app.test_client()

    return build


def ip(client, headers, peer="10.0.0.5"):
    return client.get("/echo-ip", headers=headers, environ_base={"REMOTE_ADDR": peer}).get_data(as_text=True)


def test_without_trusted_proxies_forwarding_headers_are_ignored(echo_app):
    c = echo_app(0)
    assert ip(c, {"X-Forwarded-For": "1.2.3.4", "X-Real-IP": "5.6.7.8"}) == "10.0.0.5"


def test_one_trusted_proxy_takes_the_rightmost_hop_not_the_spoofed_leftmost(echo_app):
    c = echo_app(1)
    assert ip(c, {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}) == "203.0.113.9"


def test_two_trusted_proxies_take_the_second_hop_from_the_right(echo_app):
    c = echo_app(2)
    assert ip(c, {"X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.1.1.1"}) == "203.0.113.9"


def test_x_real_ip_is_used_when_the_trusted_proxy_sets_no_forwarded_for(echo_app):
    c = echo_app(1)
    assert ip(c, {"X-Real-IP": "198.51.100.4"}) == "198.51.100.4"
    assert ip(c, {}) == "10.0.0.5"


def test_a_garbage_trusted_hop_keeps_the_proxy_address(echo_app):
    c = echo_app(1)
    assert ip(c, {"X-Forwarded-For": "1.2.3.4, not-an-ip", "X-Real-IP": "7.7.7.7"}) == "10.0.0.5"


def test_forwarding_headers_from_a_peer_outside_the_proxy_networks_are_dropped(echo_app):
    c = echo_app(1, "10.0.0.0/8")
    spoofed = {"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "7.7.7.7", "X-Forwarded-Proto": "https"}
    assert ip(c, spoofed, peer="198.51.100.20") == "198.51.100.20"
    scheme = c.get("/echo-scheme", headers=spoofed, environ_base={"REMOTE_ADDR": "198.51.100.20"})
    assert scheme.get_data(as_text=True) == "http"
    # Our own proxy, inside the networks, is still believed.
    assert ip(c, {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}, peer="10.1.2.3") == "203.0.113.9"
    scheme = c.get("/echo-scheme", headers={"X-Forwarded-Proto": "https"}, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert scheme.get_data(as_text=True) == "https"


def test_a_client_bypassing_the_proxy_cannot_rotate_x_forwarded_for_past_the_rate_limit(make_settings_app):
    from wallet_api.config import RateLimits

    app = make_settings_app(trusted_proxy_count=1, trusted_proxy_cidrs="10.0.0.0/8", ratelimit_enabled=True,
                            rate_limits=RateLimits(auth="3/minute"))
    c = app.test_client()
    codes = [c.post("/auth/login", json={"email": f"x{i}@example.com", "password": "p"},
                    headers={"X-Forwarded-For": f"192.0.2.{i}"},
                    environ_base={"REMOTE_ADDR": "198.51.100.30"}).status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]
