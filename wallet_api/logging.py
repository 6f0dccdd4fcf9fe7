"""Structured logs with the request id on every line, and no secrets in any of them.

structlog renders JSON in production and readable lines in development; stdlib loggers
(gunicorn, rq, alembic, werkzeug) go through the same processors. `redact` drops values of
keys that look secret wherever they appear in an event, as a last line of defence.
"""
from __future__ import annotations

import functools
import logging
import re
import sys
import time
import uuid

import structlog
from flask import Flask, g, request

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|authorization|api[_-]?key|signature|cookie",
                         re.IGNORECASE)
REDACTED = "[redacted]"


def redact(_logger, _name, event_dict: dict) -> dict:
    return {k: (REDACTED if v is not None and _is_secret_key(k) else _redact_nested(v))
            for k, v in event_dict.items()}


def _redact_nested(value):
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and _is_secret_key(k) else _redact_nested(v))
                for k, v in value.items()}
    return value


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    # Events reuse a small set of keys: the regex runs once per key and process, not per line.
    return _SECRET_KEY.search(key) is not None


def configure_logging(*, level: str = "INFO", json: bool = False) -> None:
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
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
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info if json else (lambda _l, _n, e: e),
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


def init_request_logging(app: Flask) -> None:
    log = structlog.get_logger("wallet_api.request")

    @app.before_request
    def bind_request_id():
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        rid = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.request_id = rid
        g.request_started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid, method=request.method, path=request.path)

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


def looks_secret(key: str) -> bool:
    """True for a field name whose value must never be logged or stored (passwords, tokens, ...)."""
    return bool(_SECRET_KEY.search(key))
