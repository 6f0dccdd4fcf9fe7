"""One error envelope everywhere; no stack trace or exception text reaches a client in production."""
import pytest
from flask import Blueprint


def assert_envelope(res, code):
    assert res.status_code == code
    assert res.is_json
    body = res.get_json()
    assert body["code"] == code and body["status"] and body["message"] and body["error"]
    return body


def test_unknown_path_is_a_404_envelope(client):
    body = assert_envelope(client.get("/no/such/thing"), 404)
    assert body["error"] == "not_found"


def test_wrong_method_is_a_405_envelope(client):
    assert_envelope(client.delete("/health"), 405)


def test_too_large_body_is_a_413_envelope(make_settings_app):
    app = make_settings_app(max_content_length=1024)
    res = app.test_client().post("/auth/register", data="x" * 4096, content_type="application/json")
    assert_envelope(res, 413)


def test_invalid_json_is_a_400_envelope_with_field_errors_by_location(client):
    res = client.post("/auth/register", data="{not json", content_type="application/json")
    assert res.status_code == 400
    assert_envelope(res, 400)
    # {location: {field: messages}} like every other error: a message for the whole body goes under _schema.
    body = res.get_json()
    assert body["errors"] == {"json": {"_schema": ["Invalid JSON body."]}}
    assert body["message"] == "Malformed request; see errors."


@pytest.fixture
def exploding_app(make_settings_app):
    def build(app_env):
        app = make_settings_app(app_env=app_env)
        bp = Blueprint("boom", __name__)

        @bp.route("/boom")
        def boom():
            raise RuntimeError("database password is hunter2; see /srv/app/secret.py line 42")

        app.register_blueprint(bp)
        return app

    return build


@pytest.mark.parametrize("app_env", ["production", "test"])
def test_an_unexpected_exception_is_a_bare_500_without_details(exploding_app, app_env):
    res = exploding_app(app_env).test_client().get("/boom", base_url="https://localhost")
    body = assert_envelope(res, 500)
    text = res.get_data(as_text=True)
    assert "hunter2" not in text and "Traceback" not in text and "RuntimeError" not in text
    assert body["message"] == "Internal Server Error"
    assert res.headers["X-Request-ID"]


def test_every_response_carries_a_request_id(client):
    res = client.get("/health")
    generated = res.headers["X-Request-ID"]
    assert len(generated) >= 16
    assert client.get("/health").headers["X-Request-ID"] != generated


def test_a_sane_incoming_request_id_is_echoed_and_an_insane_one_replaced(client):
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    evil = "x" * 500
    assert client.get("/health", headers={"X-Request-ID": evil}).headers["X-Request-ID"] != evil
    injected = "abc\r\nSet-Cookie: a=b"
    res = client.get("/health", headers={"X-Request-ID": "ok<script>"})
    assert res.headers["X-Request-ID"] != "ok<script>"
    assert injected not in str(res.headers)


def test_cors_allows_only_configured_origins(make_settings_app):
    app = make_settings_app(cors_allowed_origins=("https://app.example.com",))
    c = app.test_client()
    ok = c.get("/health", headers={"Origin": "https://app.example.com"})
    assert ok.headers.get("Access-Control-Allow-Origin") == "https://app.example.com"
    assert "X-Request-ID" in ok.headers.get("Access-Control-Expose-Headers", "")
    bad = c.get("/health", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in bad.headers
