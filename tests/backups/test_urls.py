"""Restored copies are reached through the URL the app was given, whatever its form: a TCP host or a
Unix-socket directory (the embedded server, /run/postgresql)."""
from sqlalchemy.engine import make_url

from wallet_api.backups.postgres import _as_url, with_database


def test_a_socket_directory_stays_a_host_not_part_of_the_database_name():
    url = make_url(_as_url(with_database("postgresql://postgres@/wallet?host=/srv/pg/run&port=5433", "copy_1")))
    assert (url.database, url.host, url.port, dict(url.query)) == ("copy_1", None, 5433, {"host": "/srv/pg/run"})


def test_a_tcp_host_keeps_its_credentials_and_options():
    url = make_url(_as_url(with_database("postgresql://app:pw@db.internal:5432/wallet?sslmode=require", "copy_2")))
    assert (url.database, url.host, url.port, url.username, url.password, dict(url.query)) == (
        "copy_2", "db.internal", 5432, "app", "pw", {"sslmode": "require"})
