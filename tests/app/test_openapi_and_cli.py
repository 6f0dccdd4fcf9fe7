from sqlalchemy import select

from wallet_api.auth.models import User
from wallet_api.extensions import db


def test_openapi_document_lists_the_contract(client):
    res = client.get("/openapi.json")
    assert res.status_code == 200
    spec = res.get_json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in ["/auth/register", "/auth/login", "/auth/refresh", "/auth/logout", "/auth/me", "/health", "/ready",
                 "/wallets", "/wallets/{wallet_id}", "/wallets/{wallet_id}/ledger", "/transfers",
                 "/transfers/{transfer_id}", "/admin/wallets/{wallet_id}/credit", "/admin/wallets/{wallet_id}/debit",
                 "/onramp/sessions", "/onramp/transactions", "/onramp/transactions/{transaction_id}",
                 "/webhooks/moonpay", "/admin/dlq", "/admin/dlq/{entry_id}/resolve"]:
        assert path in paths, (path, sorted(paths))
    assert "bearerAuth" in spec["components"]["securitySchemes"]


def test_interactive_docs_are_served(client):
    res = client.get("/docs")
    assert res.status_code == 200
    assert b"swagger" in res.data.lower()


def test_create_admin_creates_an_admin_who_can_log_in(app, client):
    result = app.test_cli_runner().invoke(args=["create-admin", "Root@Example.com", "--password",
                                                "an admin passphrase"])
    assert result.exit_code == 0, result.output
    assert "Created admin root@example.com" in result.output
    with app.app_context():
        assert db.session.scalar(select(User.role).where(User.email == "root@example.com")) == "ADMIN"
    res = client.post("/auth/login", json={"email": "root@example.com", "password": "an admin passphrase"})
    assert res.status_code == 200


def test_create_admin_prompts_for_the_password_and_promotes_existing_users(app, make_user):
    existing = make_user(email="bob@example.com")
    result = app.test_cli_runner().invoke(args=["create-admin", "bob@example.com"],
                                          input="another passphrase\nanother passphrase\n")
    assert result.exit_code == 0, result.output
    assert "Promoted admin bob@example.com" in result.output
    with app.app_context():
        assert db.session.get(User, existing.id).role == "ADMIN"


def test_create_admin_rejects_a_bad_email_or_short_password(app):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["create-admin", "nope", "--password", "an admin passphrase"]).exit_code != 0
    short = runner.invoke(args=["create-admin", "ok@example.com", "--password", "short"])
    assert short.exit_code != 0 and "12" in short.output
