"""Admin adjustments: audited credits and debits of a user wallet against the platform adjustments wallet."""
import uuid

from flask.views import MethodView
from flask_jwt_extended import get_jwt_identity
from flask_smorest import Blueprint

from wallet_api.auth.tokens import admin_required
from wallet_api.extensions import limiter
from wallet_api.ratelimit import limit_for
from wallet_api.wallets import ledger, service
from wallet_api.idempotency import IDEMPOTENCY_KEY_PARAMETER, idempotent, request_reference
from wallet_api.wallets.schemas import AdjustmentCreateSchema, AdjustmentSchema

blp = Blueprint("admin_wallets", __name__, url_prefix="/admin/wallets",
                description="Admin balance adjustments (ADMIN role)")
DOC = {"parameters": [IDEMPOTENCY_KEY_PARAMETER], "security": [{"bearerAuth": []}]}


def _adjust(action: str, wallet_id: uuid.UUID, data: dict):
    return service.adjust_balance(admin_id=uuid.UUID(get_jwt_identity()), wallet_id=wallet_id, action=action,
                                  amount=data["amount"], reason=data["reason"], request_ref=request_reference())


@blp.route("/<uuid:wallet_id>/credit")
class AdminCredit(MethodView):
    decorators = [limiter.limit(limit_for("admin_emergency")), admin_required]

    @idempotent
    @blp.doc(**DOC)
    @blp.arguments(AdjustmentCreateSchema)
    @blp.response(201, AdjustmentSchema)
    @blp.alt_response(404, description="No such user wallet")
    def post(self, data, wallet_id):
        """Emergency credit of a user wallet (2/min), from the platform adjustments wallet"""
        return _adjust(ledger.CREDIT, wallet_id, data)


@blp.route("/<uuid:wallet_id>/debit")
class AdminDebit(MethodView):
    decorators = [limiter.limit(limit_for("admin")), admin_required]

    @idempotent
    @blp.doc(**DOC)
    @blp.arguments(AdjustmentCreateSchema)
    @blp.response(201, AdjustmentSchema)
    @blp.alt_response(404, description="No such user wallet")
    def post(self, data, wallet_id):
        """Debit of a user wallet into the platform adjustments wallet; never below zero"""
        return _adjust(ledger.DEBIT, wallet_id, data)
