"""System wallets: the other side of money entering or leaving the platform, one per account and currency."""
from sqlalchemy import text
from sqlalchemy.orm import Session

from wallet_api.wallets.currencies import SUPPORTED
from wallet_api.wallets.models import SystemAccount


def ensure_system_wallets(session: Session) -> None:
    """Create any missing system wallet (idempotent; the caller commits)."""
    session.execute(text("""
        INSERT INTO wallets (id, system_account, currency)
        SELECT gen_random_uuid(), account, currency
        FROM unnest(CAST(:accounts AS text[])) AS account, unnest(CAST(:currencies AS text[])) AS currency
        ON CONFLICT (system_account, currency) WHERE system_account IS NOT NULL DO NOTHING
    """), {"accounts": list(SystemAccount.ALL), "currencies": list(SUPPORTED)})
