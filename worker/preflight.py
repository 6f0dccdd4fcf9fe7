"""`python -m worker.preflight`: fail fast before `rq worker` starts; print the queues to consume.

Exits 1, naming every problem, when the configuration is invalid, the app cannot be built or
Redis cannot be reached. On success prints QUEUE_NAMES (space-separated) for bin/start-worker.
"""
from __future__ import annotations

import sys


def settings_and_redis():
    """Validated settings and a reachable Redis, or exit 1 naming the problem (never a secret)."""
    from wallet_api.config import ConfigError, load_settings
    from wallet_api.queues import redis_from_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    connection = redis_from_settings(settings, socket_connect_timeout=3)
    try:
        connection.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach Redis stops the boot
        print(f"Redis at REDIS_URL is not reachable: {type(exc).__name__}", file=sys.stderr)
        raise SystemExit(1) from None
    return settings, connection


def main() -> int:
    from wallet_api import create_app
    from wallet_api.queues import QUEUE_NAMES

    settings, _ = settings_and_redis()
    create_app(settings)  # anything else the app refuses (e.g. a malformed allowlist) stops here
    print(" ".join(QUEUE_NAMES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
