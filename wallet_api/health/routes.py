import time

from flask import current_app
from flask.views import MethodView
from marshmallow import Schema, fields

from wallet_api.extensions import limiter
from wallet_api.health import service
from wallet_api.request_parsing import Blueprint

blp = Blueprint("health", __name__, description="Liveness and readiness probes")
blueprints = [blp]
limiter.exempt(blp)
_STARTED = time.monotonic()


class HealthSchema(Schema):
    status = fields.String()
    uptime_seconds = fields.Float()
    version = fields.String()


class CheckSchema(Schema):
    ok = fields.Boolean()
    detail = fields.String()


class ReadySchema(Schema):
    status = fields.String(metadata={"enum": ["ok", "unavailable"]})
    failing = fields.List(fields.String(), metadata={"description": "The names of the failing checks"})
    checks = fields.Dict(keys=fields.String(), values=fields.Nested(CheckSchema))


@blp.route("/health")
class Health(MethodView):
    answers_without_dependencies = True  # never a 503 (see wallet_api/openapi.py)

    @blp.response(200, HealthSchema)
    def get(self):
        """Liveness: 200 whenever the process serves requests; touches no dependency"""
        return {"status": "ok", "uptime_seconds": round(time.monotonic() - _STARTED, 3),
                "version": current_app.config["SETTINGS"].version}


@blp.route("/ready")
class Ready(MethodView):
    @blp.response(200, ReadySchema)
    @blp.alt_response(503, schema=ReadySchema, description="A dependency is not ready")
    def get(self):
        """Readiness: database, migrations, Redis, secrets, the database role, TLS, periodic jobs; 503
        naming every failing check"""
        checks = service.readiness_checks()
        failing = [name for name, check in checks.items() if not check["ok"]]
        return {"status": "unavailable" if failing else "ok", "failing": failing, "checks": checks}, \
            503 if failing else 200
