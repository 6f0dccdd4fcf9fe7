"""Where no redis-server serves TLS, the TLS Redis tests talk to a plain one through tls_terminator.py.
It relays every byte both ways and leaves no connection half open: whichever side closes, the
other side's connection is closed too. Stopping the TLS Redis stops both processes."""
import os
import socket
import ssl

from tests.deploy.tls_redis import TlsRedis
from tests.onramp.support import wait_for


def test_the_terminator_relays_tls_to_a_plain_redis_and_closes_both_sides_together(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_REDIS_TLS", "proxy")
    redis = TlsRedis(tmp_path).start()
    try:
        assert redis.tls_by == "terminator"
        plain = redis.backend.client()
        names = lambda: {c["name"] for c in plain.client_list()}  # noqa: E731

        value = os.urandom(1_000_000)  # many TLS records each way
        redis.client().set("value", value)
        assert redis.client().get("value") == value and plain.get("value") == value

        # The client closes: its connection to the plain redis-server closes.
        client = _tls_socket(redis.port)
        _command(client, b"CLIENT SETNAME leaving\r\n")
        assert "leaving" in names()
        client.close()
        wait_for(lambda: "leaving" not in names(), timeout=5, message="the relayed connection to close")

        # The redis-server closes a connection: the client sees it closed.
        client = _tls_socket(redis.port)
        _command(client, b"CLIENT SETNAME dropped\r\n")
        [dropped] = [c["id"] for c in plain.client_list() if c["name"] == "dropped"]
        plain.execute_command("CLIENT", "KILL", "ID", dropped)
        client.settimeout(5)
        try:
            assert client.recv(1) == b""
        except (ssl.SSLEOFError, ConnectionResetError):
            pass  # closed without close_notify: closed all the same
        client.close()
    finally:
        processes = [redis.terminator, redis.backend.process if redis.backend else None]
        redis.kill()
    assert all(process is not None and process.poll() is not None for process in processes)


def _tls_socket(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the test's self-signed certificate
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))


def _command(client: ssl.SSLSocket, command: bytes) -> None:
    client.sendall(command)
    assert client.recv(64) == b"+OK\r\n"
