"""Custodial crypto wallet platform API."""
from wallet_api.app import create_app

__all__ = ["create_app"]
