"""Every model module, imported once so the metadata (and Alembic) sees every table."""
from wallet_api import idempotency  # noqa: F401
from wallet_api.auth import models as auth_models  # noqa: F401
from wallet_api.wallets import models as wallet_models  # noqa: F401
from wallet_api.onramp import models as onramp_models  # noqa: F401
from wallet_api.alerts import models as alert_models  # noqa: F401
from wallet_api.jobs import models as job_models  # noqa: F401
from wallet_api.admin import models as admin_models  # noqa: F401
