"""docs/API_REFERENCE.md stays true: every operation of the app's own OpenAPI document has a row in
its tables, and every route a row names exists. A route added without docs fails here."""
from __future__ import annotations

import re
from pathlib import Path

from werkzeug.routing import RequestRedirect
from werkzeug.exceptions import MethodNotAllowed, NotFound

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "API_REFERENCE.md"
METHODS = ("get", "post", "put", "patch", "delete")
# A route is documented by a table row that starts with it: | `POST /transfers` | ...
ROW = re.compile(r"^\|\s*`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`\s*\|")
PLACEHOLDER = re.compile(r"<[^>]+>|\{[^}]+\}")


def shape(path: str) -> str:
    """`/wallets/<id>/ledger` and `/wallets/{wallet_id}/ledger` are one route: placeholders unnamed."""
    return PLACEHOLDER.sub("{}", path)


def documented_rows() -> list[tuple[str, str]]:
    rows = []
    for line in REFERENCE.read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows.append((match.group(1), match.group(2)))
    return rows


def test_every_openapi_operation_has_a_row(client):
    spec = client.get("/openapi.json").get_json()
    operations = {(method.upper(), shape(path)) for path, item in spec["paths"].items()
                  for method in item if method in METHODS}
    assert len(operations) > 25  # the document is the real one, not an empty stub
    documented = {(method, shape(path)) for method, path in documented_rows()}
    missing = sorted(f"{method} {path}" for method, path in operations - documented)
    assert not missing, f"routes without a row in docs/API_REFERENCE.md: {missing}"


def test_every_documented_route_exists(app):
    adapter = app.url_map.bind("api.example.com")
    unknown = []
    for method, path in documented_rows():
        # A sample value for each placeholder: a UUID fits every converter the app uses.
        concrete = PLACEHOLDER.sub("00000000-0000-4000-8000-000000000000", path)
        try:
            adapter.match(concrete, method=method)
        except (NotFound, MethodNotAllowed, RequestRedirect):
            unknown.append(f"{method} {path}")
    assert not unknown, f"docs/API_REFERENCE.md documents routes the app does not have: {unknown}"


def test_a_row_is_a_route_once(app):
    rows = [(method, shape(path)) for method, path in documented_rows()]
    twice = sorted({f"{m} {p}" for m, p in rows if rows.count((m, p)) > 1})
    assert not twice, f"documented twice in docs/API_REFERENCE.md: {twice}"
