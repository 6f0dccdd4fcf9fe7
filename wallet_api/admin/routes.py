"""Operator actions (role ADMIN): every admin route lives here, thin like the rest (parse, call one
service function, return), so the admin access log has one place to hook."""
import uuid

from flask.views import MethodView
from flask_jwt_extended import get_jwt_identity
from flask_smorest import Blueprint

from wallet_api.admin.schemas import DlqEntrySchema, DlqPageSchema, DlqQuerySchema, DlqResolveSchema
from wallet_api.auth.tokens import admin_required
from wallet_api.extensions import limiter
from wallet_api.idempotency import IDEMPOTENCY_KEY_PARAMETER, idempotent, request_reference
from wallet_api.onramp import dead_letters
from wallet_api.ratelimit import limit_for
from wallet_api.wallets import ledger
from wallet_api.wallets import service as wallet_service
from wallet_api.wallets.schemas import AdjustmentCreateSchema, AdjustmentSchema

blp = Blueprint("admin", __name__, url_prefix="/admin", description="Operator actions (role ADMIN)")
blueprints = [blp]
admin_limit = limiter.limit(limit_for("admin"))
SECURITY = [{"bearerAuth": []}]


def _admin_id() -> uuid.UUID:
    return uuid.UUID(get_jwt_identity())


@blp.route("/dlq")
class DeadLetters(MethodView):
    decorators = [admin_limit, admin_required]

    @blp.arguments(DlqQuerySchema, location="query")
    @blp.response(200, DlqPageSchema)
    @blp.doc(security=SECURITY)
    def get(self, query):
        """Dead-lettered webhook events, newest first (`status`, `limit`, `cursor`)"""
        return dead_letters.list_dlq(resolved=query["status"] == "resolved", limit=query["limit"],
                                     cursor=query["cursor"])


@blp.route("/dlq/<uuid:entry_id>/resolve")
class ResolveDeadLetter(MethodView):
    decorators = [admin_limit, admin_required]

    @blp.arguments(DlqResolveSchema)
    @blp.response(200, DlqEntrySchema)
    @blp.alt_response(404, description="No such entry")
    @blp.alt_response(409, description="Already resolved")
    @blp.doc(security=SECURITY)
    def post(self, data, entry_id):
        """Resolve an entry with a note: replay the event, or discard it"""
        return dead_letters.resolve_dlq(entry_id=entry_id, action=data["action"], note=data["note"],
                                        admin_id=_admin_id())


# --------------------------------------------------------------------------- wallet adjustments

ADJUSTMENT_DOC = {"parameters": [IDEMPOTENCY_KEY_PARAMETER], "security": SECURITY}


def _adjust(action: str, wallet_id: uuid.UUID, data: dict):
    return wallet_service.adjust_balance(admin_id=_admin_id(), wallet_id=wallet_id, action=action,
                                         amount=data["amount"], reason=data["reason"],
                                         request_ref=request_reference())


@blp.route("/wallets/<uuid:wallet_id>/credit")
class AdminCredit(MethodView):
    decorators = [limiter.limit(limit_for("admin_emergency")), admin_required]

    @idempotent
    @blp.doc(**ADJUSTMENT_DOC)
    @blp.arguments(AdjustmentCreateSchema)
    @blp.response(201, AdjustmentSchema)
    @blp.alt_response(404, description="No such user wallet")
    def post(self, data, wallet_id):
        """Emergency credit of a user wallet (2/min), from the platform adjustments wallet"""
        return _adjust(ledger.CREDIT, wallet_id, data)


@blp.route("/wallets/<uuid:wallet_id>/debit")
class AdminDebit(MethodView):
    decorators = [admin_limit, admin_required]

    @idempotent
    @blp.doc(**ADJUSTMENT_DOC)
    @blp.arguments(AdjustmentCreateSchema)
    @blp.response(201, AdjustmentSchema)
    @blp.alt_response(404, description="No such user wallet")
    def post(self, data, wallet_id):
        """Debit of a user wallet into the platform adjustments wallet; never below zero"""
        return _adjust(ledger.DEBIT, wallet_id, data)
