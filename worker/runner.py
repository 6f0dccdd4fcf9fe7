"""The worker process: one Flask app built in the parent, a fresh app context and DB session per job.

`rq worker -w worker.runner.WalletWorker` forks one work-horse per job. The parent builds the
app (failing fast on bad configuration) and holds no database connection while it forks (the
one it uses to warm up is closed first); the horse also drops any pooled connection it might
have inherited (`engine.dispose(close=False)`), so parent and child never share a socket. HerokuWorker turns SIGTERM into a warm shutdown: the running job gets
ShutDownImminentException after a few seconds instead of being SIGKILLed mid-write, and since
every job is one database transaction, an interrupted job leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import logging

import structlog
from flask import Flask, current_app, has_app_context
from rq.worker import HerokuWorker

_app: Flask | None = None


def get_app() -> Flask:
    """The app jobs run in: the current one if any (tests, in-process workers), else built once from the env."""
    global _app
    if has_app_context():
        return current_app._get_current_object()  # type: ignore[attr-defined]
    if _app is None:
        from wallet_api import create_app

        _app = create_app()
    return _app


@contextlib.contextmanager
def job_app_context():
    """A fresh app context (so a fresh scoped DB session) around one job, cleaned up after it."""
    from wallet_api.extensions import db

    app = get_app()
    with app.app_context():
        try:
            yield app
        finally:
            db.session.remove()
            # The next job (or RQ's own lines between jobs) must not carry this job's log context.
            structlog.contextvars.clear_contextvars()


def _preload() -> None:
    """Do once in the parent what every forked horse would otherwise redo on every job.

    Imports the job modules, configures the ORM mappers and lets SQLAlchemy initialise its
    PostgreSQL dialect (server version, capabilities) on one short-lived connection, which is
    closed again before any fork: the parent holds no connection while horses are forked, and
    each horse starts warm instead of re-importing and re-initialising per job.
    """
    import importlib

    from sqlalchemy import text
    from sqlalchemy.orm import configure_mappers

    from wallet_api.extensions import db

    for module in ("worker.jobs", "wallet_api.onramp.intake", "wallet_api.onramp.apply_job",
                   "wallet_api.onramp.retry_job", "wallet_api.wallets.ledger"):
        importlib.import_module(module)
    configure_mappers()
    with db.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    db.engine.dispose()  # close it: nothing pooled survives into a fork


class WalletWorker(HerokuWorker):
    """HerokuWorker that runs jobs inside the wallet_api app, with fork-safe DB connections."""

    def work(self, *args, **kwargs):
        app = get_app()  # once, in the parent: a bad environment stops the worker before any job
        # The `rq` CLI gave its loggers their own plain handlers before the app configured logging;
        # drop them so RQ's lines go through the app's structured (JSON in production) handler once.
        for name in ("rq.worker", "rq.job", "rq.scheduler"):
            logging.getLogger(name).handlers.clear()
        with app.app_context():
            _preload()
            return super().work(*args, **kwargs)

    def main_work_horse(self, job, queue):
        # In the forked child: never reuse a connection the parent's pool may hold.
        from wallet_api.extensions import db

        if has_app_context():
            db.engine.dispose(close=False)
            db.session.remove()
        return super().main_work_horse(job, queue)
