"""Structured logs: every line carries its context, and no secret reaches any of them.

structlog renders JSON in production and readable lines in development; stdlib loggers
(gunicorn, rq, alembic, werkzeug) go through the same processors. The context lives in structlog's
contextvars, bound where it becomes known and cleared at the end of each request and job, so a
reused gthread thread or worker process never carries one request's ids into the next:

    request_id          every web request (X-Request-ID when sane, else a new one); the jobs a
                        request enqueues carry it in their meta (wallet_api/queues.py), and their lines
                        show it; any other job starts an id of its own
    parent_job_id       a job enqueued by another job (a drain's continuation, a sweep)
    method, path        web requests
    user_id             once the access token is verified (auth/tokens.py)
    wallet_id           routes naming a wallet, and the ledger while it moves money (`to_wallet_id`
                        too for a transfer)
    provider_event_id   the stored webhook event being received or applied (onramp)
    job_id, job_name    every RQ job, bound by the worker before the job runs

The sanitiser (wallet_api/log_sanitiser.py) is the last processor before rendering. Money movements
and admin actions also go to the AUDIT channel (wallet_api/audit.py). See docs/LOGGING.md.
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
import uuid

import structlog
from flask import Flask, g, request

from wallet_api.log_sanitiser import sanitise_event

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Job meta fields: the web request that enqueued the job, or the job that did.
JOB_REQUEST_ID = "request_id"
JOB_PARENT_ID = "parent_job_id"
AUDIT_LOGGER = "wallet_api.audit"


def configure_logging(*, level: str = "INFO", json: bool = False) -> None:
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        # filter_by_level first: events below the level cost nothing more (it needs a stdlib
        # logger, so it cannot sit in foreign_pre_chain).
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        # The sanitiser runs once per line, structlog's and the stdlib's alike, after the exception
        # is rendered to text (so a secret quoted in an error message is caught too, in development
        # as in production).
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    sanitise_event,
                    renderer],
    ))
    # Every line is rendered from the event dict alone, so the stdlib need not find each call's
    # source line or thread name (the logging HOWTO's "Optimization" knobs). The process id stays:
    # gunicorn's own log format prints it.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("werkzeug",):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # The audit trail does not depend on LOG_LEVEL: an operator quieting the logs keeps it.
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.INFO)


def init_request_logging(app: Flask) -> None:
    log = structlog.get_logger("wallet_api.request")

    @app.before_request
    def bind_request_id():
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        rid = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.request_id = rid
        g.request_started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        context = {"request_id": rid, "method": request.method, "path": request.path}
        wallet_id = request.view_args.get("wallet_id") if request.view_args else None
        if wallet_id is not None:  # a route naming a wallet (its converter made it a UUID)
            context["wallet_id"] = str(wallet_id)
        structlog.contextvars.bind_contextvars(**context)

    @app.after_request
    def echo_request_id(response):
        rid = g.get("request_id") or uuid.uuid4().hex
        response.headers[REQUEST_ID_HEADER] = rid
        started = g.get("request_started")
        if started is not None:
            log.info("request", status=response.status_code,
                     duration_ms=round((time.perf_counter() - started) * 1000, 2))
        return response

    @app.teardown_request
    def unbind_request(_exc):
        # Threads are reused: the next request, or a job in this thread, must not inherit our ids.
        structlog.contextvars.clear_contextvars()


def bind_user(user_id) -> None:
    """From here to the end of the request (or job), lines name the user."""
    structlog.contextvars.bind_contextvars(user_id=str(user_id))


def job_origin() -> dict:
    """What a job enqueued now carries in its meta: the web request's id, or, from inside a job, that
    job's id (the new job starts a request id of its own: a drain's continuation, the sweeper's
    re-enqueued drains and alert notifications are not the work of the request that started the
    first job); nothing from the scheduler or a command."""
    context = structlog.contextvars.get_contextvars()
    if "job_id" in context:
        return {JOB_PARENT_ID: context["job_id"]}
    if "request_id" in context:
        return {JOB_REQUEST_ID: context["request_id"]}
    return {}


@contextlib.contextmanager
def scoped_context(**values):
    """Bind `values` for the block; afterwards the context is exactly what it was before, so ids
    bound inside the block (by `bind_contextvars` anywhere below) end with it too."""
    saved = structlog.contextvars.get_contextvars()
    structlog.contextvars.bind_contextvars(**values)
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**saved)


def bind_job(job) -> None:
    """A fresh log context for RQ job `job`: its id, its function, the request id it was enqueued
    with (or a new one, for a job enqueued by a job, the scheduler or a command) and the id of the
    job that enqueued it, if one did (see `job_origin`)."""
    meta = job.meta or {}
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=meta.get(JOB_REQUEST_ID) or uuid.uuid4().hex,
                                          job_id=job.id, job_name=job.func_name)
    if meta.get(JOB_PARENT_ID):
        structlog.contextvars.bind_contextvars(parent_job_id=meta[JOB_PARENT_ID])


@contextlib.contextmanager
def job_context(job):
    """`bind_job` around one job; nothing of its context is left afterwards."""
    bind_job(job)
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
