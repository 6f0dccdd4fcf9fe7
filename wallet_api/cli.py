"""Operator commands (`flask --app wsgi <command>`); each calls a service, never SQL of its own."""
from __future__ import annotations

import functools

import click
from flask import Flask

from wallet_api.auth.schemas import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH, normalise_email
from wallet_api.backups import cli as backups_cli
from wallet_api.config import Settings
from wallet_api.onramp import cli as onramp_cli
from wallet_api.reconciliation import cli as reconciliation_cli
from wallet_api.reconciliation.restore_check import check_restored_ledger


def register_cli(app: Flask) -> None:
    @app.cli.command("create-admin")
    @click.argument("email")
    @click.option("--password", help="Prompted for (hidden, twice) when not given.")
    def create_admin(email: str, password: str | None) -> None:
        """Create an ADMIN user, or promote an existing user to ADMIN."""
        from marshmallow import ValidationError

        from wallet_api.auth import service

        try:
            email = normalise_email(email.strip())
        except ValidationError as exc:
            raise click.BadParameter("; ".join(exc.messages), param_hint="EMAIL") from None
        if password is None:
            password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
            raise click.BadParameter(
                f"must be {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters", param_hint="--password")
        user, created = service.create_admin(email=email, password=password)
        click.echo(f"{'Created' if created else 'Promoted'} admin {user.email} ({user.id})")

    for module in CLI_MODULES:
        module.register(app)
    # Backups sit below the domains; a restore's ledger check is reconciliation's, handed in here.
    backups_cli.register(app, check_ledger=_restored_ledger_check)


def _restored_ledger_check(settings: Settings):
    return functools.partial(check_restored_ledger, statement_timeout_ms=settings.reconciliation_statement_timeout_ms)


# Domain modules that add commands, each with `register(app)`.
CLI_MODULES = (onramp_cli, reconciliation_cli)
