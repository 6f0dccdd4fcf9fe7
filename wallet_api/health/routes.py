import hmac
import time

from flask import Response, current_app, request
from flask.views import MethodView
from marshmallow import Schema, fields

from wallet_api.errors import Unauthorized
from wallet_api.extensions import limiter
from wallet_api.health import service
from wallet_api.metrics_export import CONTENT_TYPE, exposition
from wallet_api.request_parsing import Blueprint

blp = Blueprint("health", __name__, description="Liveness and readiness probes")
metrics_blp = Blueprint("metrics", __name__, description="Prometheus metrics (docs/OBSERVABILITY.md)")
blueprints = [blp, metrics_blp]
# Probes and scrapers call on a timer from a few addresses: a limit would only blind them.
limiter.exempt(blp)
limiter.exempt(metrics_blp)
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


@metrics_blp.route("/metrics")
class Metrics(MethodView):
    @metrics_blp.response(200)
    @metrics_blp.alt_response(401, description="METRICS_TOKEN is set and the bearer token is missing or wrong")
    @metrics_blp.doc(security=[{}, {"metricsToken": []}], responses={"200": {
        "description": "Prometheus text exposition format 0.0.4: every metric of docs/OBSERVABILITY.md",
        "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def get(self):
        """Prometheus metrics of every web worker, with gauges read from PostgreSQL and Redis; not rate limited"""
        token = current_app.config["SETTINGS"].metrics_token
        if token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise Unauthorized("A valid metrics token is required: Authorization: Bearer <METRICS_TOKEN>.",
                                   error="invalid_metrics_token", headers={"WWW-Authenticate": "Bearer"})
        return Response(exposition(), content_type=CONTENT_TYPE)
