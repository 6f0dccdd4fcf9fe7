"""The interactive API documentation at /docs: Swagger UI served from this app, never from a CDN.

flask-smorest's own Swagger UI page loads the UI from a CDN and starts it with an inline script,
which the Content-Security-Policy of security.py forbids (no outside origin, no inline script). The
UI's files come from the `swagger-ui-bundle` package instead, and the start-up script is a file
of ours, so /docs works under `script-src 'self'`.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template_string, send_from_directory, url_for
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import NotFound

bp = Blueprint("api_docs", __name__, url_prefix="/docs")

# Only what the page loads; the bundle's sample index.html and initializer point at a demo API.
ASSETS = frozenset({"swagger-ui.css", "index.css", "swagger-ui-bundle.js",
                    "favicon-32x32.png", "favicon-16x16.png"})

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{{ title }}: API documentation</title>
  <link rel="stylesheet" href="{{ asset('swagger-ui.css') }}">
  <link rel="stylesheet" href="{{ asset('index.css') }}">
  <link rel="icon" type="image/png" href="{{ asset('favicon-32x32.png') }}" sizes="32x32">
</head>
<body>
  <div id="swagger-ui" data-spec-url="{{ spec_url }}"></div>
  <script src="{{ asset('swagger-ui-bundle.js') }}"></script>
  <script src="{{ url_for('api_docs.start') }}"></script>
</body>
</html>
"""

START = """\
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
})();
"""


@bp.get("")
def page():
    return render_template_string(PAGE, title=current_app.config["API_TITLE"],
                                  spec_url=url_for("api-docs.openapi_json"),
                                  asset=lambda name: url_for("api_docs.asset", filename=name))


@bp.get("/start.js")
def start():
    return Response(START, mimetype="text/javascript")


@bp.get("/static/<path:filename>")
def asset(filename: str):
    if filename not in ASSETS:
        raise NotFound()
    return send_from_directory(swagger_ui_path, filename, max_age=3600)
