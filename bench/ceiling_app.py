"""The most a Flask request path can do on this machine: the ceiling bench/request_path.py measures
next to the app (scenario `ceiling`).

One route, POST /credit {"wallet_id": N, "amount": "1.00"}, runs pgbench's bare credit
(../shared/baseline/credit_tx.sql: BEGIN; SELECT ... FOR UPDATE; INSERT entry; UPDATE balance;
COMMIT) on raw psycopg2, one connection per thread, on the baseline's two-table schema without
triggers. No authentication, validation, idempotency, logging or metrics: everything the wallet API
adds comes off this. Served by gunicorn with the same worker class, workers and threads as the app.
"""
import os
import secrets
import threading
from decimal import Decimal

import psycopg2
from flask import Flask, jsonify, request

SCHEMA = """
CREATE TABLE IF NOT EXISTS ceiling_wallets (
    id bigserial PRIMARY KEY, user_id bigint, currency text,
    balance numeric(38,18) NOT NULL DEFAULT 0, version bigint NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS ceiling_entries (
    id bigserial PRIMARY KEY, wallet_id bigint REFERENCES ceiling_wallets (id), amount numeric(38,18),
    balance_after numeric(38,18), idempotency_key text UNIQUE, created_at timestamptz DEFAULT now());
CREATE INDEX IF NOT EXISTS ceiling_entries_wallet_idx ON ceiling_entries (wallet_id);
"""
WALLETS = 10_000

app = Flask(__name__)
_local = threading.local()


def setup(database_url: str) -> None:
    """The baseline's schema and 10,000 wallets, in tables of their own (called by the benchmark)."""
    connection = psycopg2.connect(database_url)
    with connection, connection.cursor() as cursor:
        cursor.execute(SCHEMA)
        cursor.execute("INSERT INTO ceiling_wallets (id, user_id, currency) "
                       "SELECT g, g, 'USD' FROM generate_series(1, %s) g ON CONFLICT DO NOTHING", (WALLETS,))
    connection.close()


def _connection():
    if getattr(_local, "pid", None) != os.getpid():
        _local.connection, _local.pid = psycopg2.connect(os.environ["DATABASE_URL"]), os.getpid()
    return _local.connection


@app.post("/credit")
def credit():
    body = request.get_json()
    wallet, amount = int(body["wallet_id"]), Decimal(body["amount"])
    connection = _connection()
    with connection, connection.cursor() as cursor:  # BEGIN ... COMMIT
        cursor.execute("SELECT balance FROM ceiling_wallets WHERE id = %s FOR UPDATE", (wallet,))
        balance = cursor.fetchone()[0] + amount
        cursor.execute("INSERT INTO ceiling_entries (wallet_id, amount, balance_after, idempotency_key) "
                       "VALUES (%s, %s, %s, %s)", (wallet, amount, balance, secrets.token_hex(12)))
        cursor.execute("UPDATE ceiling_wallets SET balance = balance + %s, version = version + 1 WHERE id = %s",
                       (amount, wallet))
    return jsonify(wallet_id=wallet, balance=str(balance)), 201


@app.get("/health")
def health():
    return jsonify(status="ok")
