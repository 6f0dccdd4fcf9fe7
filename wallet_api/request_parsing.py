"""How every route reads its arguments: webargs as flask-smorest uses it, plus what no route accepts.

- Text that no column and no JSON document can hold is refused at the edge, once, for every string
  field of every location (body, query, headers...): NUL characters (PostgreSQL refuses them in
  text and JSONB) and lone UTF-16 surrogates (not encodable as UTF-8). 422 naming the field.
- JSON nested deeper than the parser can follow is a malformed body (400), not a crash.

Route modules build their blueprints with this module's `Blueprint`.
"""
from __future__ import annotations

import json

import flask_smorest
from marshmallow import ValidationError
from webargs.flaskparser import FlaskParser

REFUSED = "Text may not contain NUL characters or unpaired UTF-16 surrogates."


def unstorable_text(value: str) -> bool:
    """True when `value` holds a NUL or a lone surrogate."""
    return "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value)


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


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictParser()
