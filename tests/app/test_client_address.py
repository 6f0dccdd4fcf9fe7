"""The client address used by rate limits and the webhook allowlist comes only from trusted hops."""
import pytest
from flask import Blueprint, request


@pytest.fixture
def echo_app(make_settings_app):
    def build(trusted_proxy_count):
        app = make_settings_app(trusted_proxy_count=trusted_proxy_count)
        bp = Blueprint("echo_ip", __name__)
        bp.add_url_rule("/echo-ip", "echo", lambda: request.remote_addr or "")
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
