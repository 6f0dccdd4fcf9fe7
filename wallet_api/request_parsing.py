"""How every route reads its arguments: webargs as flask-smorest uses it, plus what no route accepts.

- Text that no column and no JSON document can hold is refused at the edge, once, for every string
  field of every location (body, query, headers...): NUL characters (PostgreSQL refuses them in
  text and JSONB) and lone UTF-16 surrogates (not encodable as UTF-8). 422 naming the field.
- A body larger than MAX_CONTENT_LENGTH is a 413 however it is framed (see read_chunked_body).
- JSON nested deeper than the parser can follow is a malformed body (400), not a crash, both for
  webargs and for anything that calls `request.get_json` (see JsonProvider).

Route modules build their blueprints with this module's `Blueprint`.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import re

import flask_smorest
from flask import current_app, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge
from marshmallow import ValidationError, fields
from webargs.flaskparser import FlaskParser

REFUSED = "Text may not contain NUL characters or unpaired UTF-16 surrogates."


# A NUL or any surrogate code point. A Python string holds a surrogate only unpaired: a pair in JSON
# text ("\\ud83d\\ude00") is decoded to the one character it encodes.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_text(value: str) -> bool:
    """True when `value` holds a NUL or a lone surrogate."""
    # One regex scan in C: a per-character generator cost more than the rest of a small body's parsing.
    return _UNSTORABLE.search(value) is not None


def storable(value: str) -> str:
    """`value` with each NUL and lone surrogate replaced by U+FFFD: for recording what a client sent (logs of
    refused requests), never for accepting it."""
    return _UNSTORABLE.sub("\ufffd", value)


def unstorable_fields(data, path: str = "") -> dict[str, list[str]]:
    """{field path: [message]} for every string (key or value) in `data` that cannot be stored."""
    found: dict[str, list[str]] = {}
    if isinstance(data, str):
        if unstorable_text(data):
            found[path or "_schema"] = [REFUSED]
    elif isinstance(data, dict):
        for key, value in data.items():
            name = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and unstorable_text(key):
                found[path or "_schema"] = [REFUSED]
                continue
            found.update(unstorable_fields(value, name))
    elif isinstance(data, (list, tuple)):
        for index, value in enumerate(data):
            found.update(unstorable_fields(value, f"{path}.{index}" if path else str(index)))
    return found


class UtcDateTime(fields.AwareDateTime):
    """An ISO 8601 timestamp with a time zone, read as UTC. Python takes offsets up to +-24 h, PostgreSQL
    up to +-15:59: an offset PostgreSQL refuses (or an instant beyond year 1..9999 in UTC) is a 422 here,
    not a database error."""

    def _deserialize(self, value, attr, data, **kwargs):
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(dt.timezone.utc)
        except OverflowError:
            raise ValidationError("Timestamp out of range.") from None


class StrictParser(FlaskParser):
    def pre_load(self, location_data, *, schema, req, location):
        # Headers and cookies are read only for the fields a schema names; a body or query is read whole.
        data = location_data if location in ("json", "query", "querystring", "form", "json_or_form") else {
            name: location_data.get(name) for name in schema.fields if name in location_data}
        found = unstorable_fields(dict(data) if hasattr(data, "items") else data)
        if found:
            raise ValidationError(found)
        return location_data

    def _raw_load_json(self, req):
        try:
            return super()._raw_load_json(req)
        except RecursionError:
            self._handle_invalid_json_error(json.JSONDecodeError("nested too deeply", "", 0), req)


def read_chunked_body() -> None:
    """before_request: read a chunked body up to MAX_CONTENT_LENGTH, and refuse a longer one with 413.

    Werkzeug caps a stream of unknown length by silently stopping at the limit, so an oversized
    chunked JSON body would be parsed truncated and answered as malformed (400). Reading one byte
    past the limit tells the two apart; the body read is then handed on with its length known.
    """
    environ = request.environ
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower() or environ.get("CONTENT_LENGTH"):
        return
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    stream, body = environ["wsgi.input"], bytearray()
    while len(body) <= limit:  # a server's read(n) may return less than n before the end
        piece = stream.read(limit + 1 - len(body))
        if not piece:
            break
        body += piece
    if len(body) > limit:
        raise RequestEntityTooLarge(f"The body may be at most {limit} bytes.")
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(bytes(body)), str(len(body))


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON with absurd nesting reported as invalid JSON (ValueError), which `get_json`
    turns into a 400, or into None when `silent`."""

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictParser()
