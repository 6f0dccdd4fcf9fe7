import uuid

from flask.views import MethodView
from flask_jwt_extended import get_jwt_identity
from flask_smorest import Blueprint

from wallet_api.admin import service
from wallet_api.admin.schemas import DlqEntrySchema, DlqPageSchema, DlqQuerySchema, DlqResolveSchema
from wallet_api.auth.tokens import admin_required
from wallet_api.extensions import limiter
from wallet_api.ratelimit import limit_for

blp = Blueprint("admin", __name__, url_prefix="/admin", description="Operator actions (role ADMIN)")
blueprints = [blp]
admin_limit = limiter.limit(limit_for("admin"))


@blp.route("/dlq")
class DeadLetters(MethodView):
    decorators = [admin_limit, admin_required]

    @blp.arguments(DlqQuerySchema, location="query")
    @blp.response(200, DlqPageSchema)
    @blp.doc(security=[{"bearerAuth": []}])
    def get(self, query):
        """Dead-lettered webhook events, newest first (`status`, `limit`, `cursor`)"""
        return service.list_dlq(resolved=query["status"] == "resolved", limit=query["limit"],
                                cursor=query["cursor"])


@blp.route("/dlq/<uuid:entry_id>/resolve")
class ResolveDeadLetter(MethodView):
    decorators = [admin_limit, admin_required]

    @blp.arguments(DlqResolveSchema)
    @blp.response(200, DlqEntrySchema)
    @blp.alt_response(404, description="No such entry")
    @blp.alt_response(409, description="Already resolved")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self, data, entry_id):
        """Resolve an entry with a note: replay the event, or discard it"""
        return service.resolve_dlq(entry_id=entry_id, action=data["action"], note=data["note"],
                                   admin_id=uuid.UUID(get_jwt_identity()))
