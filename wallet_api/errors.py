"""One JSON error envelope for every failure, mapped in one place.

Every error body is `{"code": <http status>, "status": <reason phrase>, "message": <text>,
"error": <stable snake_case reason>, "errors"?: {<location>: {<field>: [messages]}}}`: the
flask-smorest envelope plus a machine-readable `error`. Unexpected exceptions become a bare 500
whose body never carries exception text or a stack trace; the details go to the log with the
request id, which the client also receives in `X-Request-ID`.
"""
from __future__ import annotations

from http import HTTPStatus

import structlog
from flask import Flask
from flask_smorest import Api
from marshmallow import INCLUDE, Schema, fields
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from werkzeug.exceptions import HTTPException

log = structlog.get_logger(__name__)


class ApiError(Exception):
    """A domain failure with an HTTP meaning; raise it from services, never build responses there."""

    status_code = 400
    error = "bad_request"

    def __init__(self, message: str, *, error: str | None = None, errors: dict | None = None,
                 status_code: int | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.error = error or self.error
        self.errors = errors
        self.status_code = status_code or self.status_code
        self.headers = headers or {}


class BadRequest(ApiError):
    status_code, error = 400, "bad_request"


class Unauthorized(ApiError):
    status_code, error = 401, "unauthorized"


class Forbidden(ApiError):
    status_code, error = 403, "forbidden"


class NotFound(ApiError):
    status_code, error = 404, "not_found"


class Conflict(ApiError):
    status_code, error = 409, "conflict"


class Unprocessable(ApiError):
    status_code, error = 422, "unprocessable"


class ServiceUnavailable(ApiError):
    status_code, error = 503, "service_unavailable"


def field_error(field: str, message: str, *, error: str = "validation_error") -> Unprocessable:
    """A 422 shaped like a schema validation error, for rules a schema cannot see."""
    return Unprocessable(message, error=error, errors={"json": {field: [message]}})


def envelope(status_code: int, message: str | None, *, error: str | None = None,
             errors: dict | None = None) -> dict:
    phrase = HTTPStatus(status_code).phrase
    body = {"code": status_code, "status": phrase,
            "message": message or phrase,
            "error": error or phrase.lower().replace(" ", "_").replace("-", "_")}
    if errors:
        body["errors"] = errors
    return body


class ErrorSchema(Schema):
    """The envelope as the OpenAPI document publishes it (`Error`): what `envelope` builds."""

    class Meta:
        # Documented as open (additionalProperties: true): clients must accept members added later.
        unknown = INCLUDE

    code = fields.Integer(required=True, metadata={"description": "The HTTP status code", "example": 422})
    status = fields.String(required=True, metadata={"description": "The HTTP reason phrase",
                                                    "example": "Unprocessable Entity"})
    message = fields.String(required=True, metadata={"description": "What went wrong, for a person"})
    error = fields.String(required=True, metadata={
        "description": "Stable machine-readable reason in snake_case, e.g. validation_error, not_found, "
                       "invalid_token, insufficient_funds, rate_limited reasons (too_many_requests, "
                       "account_throttled)", "example": "validation_error"})
    errors = fields.Dict(keys=fields.String(), values=fields.Dict(), metadata={
        "description": "Field-level messages by location (json, query), then by field: "
                       "`{\"json\": {\"amount\": [\"...\"]}}`; a nested field or list item nests further. "
                       "Present on validation errors (422) and on a malformed webhook (400)",
        "example": {"json": {"amount": ["Amount must be a decimal string such as \"10.50\"."]}}})


class WalletApi(Api):
    """flask-smorest's Api with the envelope above for every HTTPException."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException):
        code = error.code or 500
        data = getattr(error, "data", None) or {}
        headers = dict(data.get("headers") or {})
        errors = _by_location(data.get("errors") or data.get("messages"))
        message = data.get("message")
        if code == 400 and errors:  # webargs' malformed JSON; Werkzeug's description blames "the browser"
            message = message or "Malformed request; see errors."
        if code == 422 and errors:
            message = message or "Request validation failed; see errors."
            return envelope(code, message, error="validation_error", errors=errors), code, headers
        if code >= 500:
            original = getattr(error, "original_exception", None)
            if original is not None:
                log.error("unhandled_exception", exc_info=original)
            # Werkzeug descriptions are static text, but a 5xx never says more than its phrase.
            message = None
        else:
            message = message or error.description
        error_name = None
        if code == 429:
            limit = getattr(error, "limit", None)
            # A limit with a message of its own (the per-account login throttle) says which it was.
            custom = getattr(limit, "error_message", None)
            if isinstance(custom, str):
                message, error_name = f"{custom} Retry after the time in the Retry-After header.", "account_throttled"
            else:
                message = "Too many requests; retry after the time in the Retry-After header."
        return envelope(code, message, error=error_name, errors=errors), code, headers


def _by_location(errors: dict | None) -> dict | None:
    """`errors` as {location: {field: messages}}: a message list given for a whole location (webargs'
    "Invalid JSON body.") goes under `_schema`, marshmallow's name for errors of no one field."""
    if not isinstance(errors, dict):
        return errors
    return {location: {"_schema": found} if isinstance(found, list) else found for location, found in errors.items()}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError):
        return envelope(exc.status_code, exc.message, error=exc.error, errors=exc.errors), \
            exc.status_code, exc.headers

    @app.errorhandler(OperationalError)
    def handle_operational_error(exc: OperationalError):
        # Lock and statement timeouts are contention, not bugs: the client may retry.
        pgcode = getattr(getattr(exc, "orig", None), "pgcode", None)
        if pgcode in ("55P03", "57014", "40P01", "40001"):
            log.warning("database_contention", pgcode=pgcode)
            return envelope(503, "The resource is busy; retry shortly.", error="resource_busy"), \
                503, {"Retry-After": "1"}
        log.error("database_error", exc_info=exc)
        return envelope(503, "The database is unavailable; retry shortly.",
                        error="database_unavailable"), 503, {"Retry-After": "5"}

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        # HTTPExceptions never get here: WalletApi's more specific handler takes them.
        log.error("unhandled_exception", exc_info=exc)
        return envelope(500, None), 500


def describe_exception(exc: BaseException, *, limit: int = 2000) -> str:
    """A one-line account of a failure for a stored record (job run, webhook event): what went wrong,
    never the SQL statement or its parameters, which may carry user data."""
    if isinstance(exc, ApiError):
        reason = f"{exc.error}: {exc.message}"
    elif isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        lines = str(orig or exc).splitlines() or [""]
        reason = f"database error: {type(orig or exc).__name__}: {lines[0]}"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return reason[:limit]
