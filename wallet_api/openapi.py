"""The error responses of the OpenAPI document, derived in one place from what each operation is.

flask-smorest documents the success response, the 422 of `@blp.arguments` and a `default` error.
Clients and validators need to know which errors each operation can really answer, so every
operation gets, from facts the code already holds:

| status | when                                                                  | from                        |
|--------|-----------------------------------------------------------------------|-----------------------------|
| 400    | a JSON body (malformed JSON) or an `Idempotency-Key` header (invalid) | requestBody, parameters     |
| 401    | a bearer token is required                                            | the operation's `security`  |
| 403    | a role is required                                                    | `required_role` on the view |
| 404    | path parameters (an unknown id, or one that is not a UUID)            | the URL rule's arguments    |
| 409    | an `Idempotency-Key` header (the first request is still running)      | parameters                  |
| 413    | a body (larger than MAX_CONTENT_LENGTH)                               | requestBody                 |
| 422    | arguments validated by a schema (flask-smorest), an `Idempotency-Key` | `@blp.arguments`, parameters|
|        | reused with another body                                              |                             |
| 429    | a rate limit applies to the method                                    | flask-limiter's limits      |
| 503    | the database is busy or unreachable (Retry-After)                     | every view but `LIVENESS`   |

Statuses a route declares itself (`alt_response`: a conflict, a domain 404) keep their description.
Every error status, declared here or by a route, is described by the one `Error` envelope of
wallet_api/errors.py unless the route gives its own schema (e.g. /ready's 503).
"""
from __future__ import annotations

from http import HTTPStatus

from apispec import BasePlugin
from flask import Flask
from flask_limiter.util import get_qualified_name

from wallet_api.extensions import limiter

ERROR_SCHEMA = "Error"
IDEMPOTENCY_HEADER = "Idempotency-Key"
METHODS = ("get", "put", "post", "patch", "delete")
# A view that answers without touching the database or Redis (a liveness probe) sets this on its class.
LIVENESS = "answers_without_dependencies"
# The role a view requires; set on its wrapper by the decorator that checks it (auth.tokens.admin_required).
REQUIRED_ROLE = "required_role"

RETRY_AFTER = {"description": "Seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}}


def error_statuses(*, operation: dict, view, path_arguments, method: str) -> dict[int, str]:
    """{status: description} of the errors `operation` can answer besides the ones it declares."""
    statuses: dict[int, str] = {}
    body = "requestBody" in operation
    idempotent = any(isinstance(p, dict) and p.get("name") == IDEMPOTENCY_HEADER
                     for p in operation.get("parameters", []))
    malformed = (["the body is not valid JSON"] if body else []) + (
        [f"the {IDEMPOTENCY_HEADER} header is not 1 to 255 printable ASCII characters"] if idempotent else [])
    if malformed:
        statuses[400] = "Malformed request: " + " or ".join(malformed)
    if operation.get("security"):
        statuses[401] = "Missing, malformed, invalid or expired bearer token"
    role = getattr(view, REQUIRED_ROLE, None)
    if role:
        statuses[403] = f"The token's role is not {role}"
    if path_arguments:
        names = ", ".join(sorted(path_arguments))
        statuses[404] = f"Not found: {names} unknown, not a valid value, or not the caller's"
    if idempotent:
        statuses[409] = f"A request with this {IDEMPOTENCY_HEADER} is still being processed; retry shortly"
    if body:
        statuses[413] = "The body is larger than the server accepts"
    if idempotent:  # flask-smorest declares the 422 of arguments validated by a schema
        statuses[422] = f"Request validation failed, or the {IDEMPOTENCY_HEADER} was used with another body"
    if _rate_limited(view, method):
        statuses[429] = "Rate limit reached; retry after the seconds in Retry-After"
    if not getattr(getattr(view, "view_class", None), LIVENESS, False):
        statuses[503] = "The database is busy or unavailable; retry after the seconds in Retry-After"
    return statuses


def _rate_limited(view, method: str) -> bool:
    limits = limiter.limit_manager.decorated_limits(get_qualified_name(view))
    return any(not limit.methods or method in limit.methods for limit in limits)


def error_response(status: int, description: str) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    if status in (429, 503):
        response["headers"] = {"Retry-After": RETRY_AFTER}
    return response


class ErrorResponses(BasePlugin):
    """apispec plugin: completes each operation's responses as the module docstring says."""

    def __init__(self, app: Flask):
        self.app = app

    def operation_helper(self, path=None, operations=None, **kwargs):
        rule = kwargs.get("rule")
        if rule is None or not operations:
            return
        view = self.app.view_functions[rule.endpoint]
        with self.app.app_context():  # rate limits are read from the settings of the app
            for method, operation in operations.items():
                if method in METHODS:
                    self._complete(operation, view=view, path_arguments=rule.arguments, method=method)

    @staticmethod
    def _complete(operation: dict, *, view, path_arguments, method: str) -> None:
        responses = operation.setdefault("responses", {})
        declared = {str(code) for code in responses}
        for status, description in error_statuses(operation=operation, view=view, path_arguments=path_arguments,
                                                   method=method).items():
            if str(status) not in declared:
                responses[status] = error_response(status, description)
        for code, response in responses.items():
            if str(code).isdigit() and int(code) >= 400 and isinstance(response, dict):
                response.setdefault("content", {"application/json": {"schema": ERROR_SCHEMA}})
                response.setdefault("description", HTTPStatus(int(code)).phrase)
                if int(code) in (429, 503):
                    response.setdefault("headers", {"Retry-After": RETRY_AFTER})
