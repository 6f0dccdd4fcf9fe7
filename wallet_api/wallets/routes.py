"""Wallets, their ledger and transfers (thin: parse, call one service function, return)."""
import uuid

from flask.views import MethodView
from flask_jwt_extended import get_jwt_identity, jwt_required

from wallet_api.extensions import limiter
from wallet_api.idempotency import (
    IDEMPOTENCY_KEY_PARAMETER,
    idempotent,
    request_reference,
)
from wallet_api.pagination import PageQuerySchema
from wallet_api.ratelimit import limit_for
from wallet_api.request_parsing import Blueprint
from wallet_api.wallets import service
from wallet_api.wallets.schemas import (
    LedgerPageSchema,
    TransferCreateSchema,
    TransferSchema,
    WalletCreateSchema,
    WalletSchema,
)

blp = Blueprint("wallets", __name__, description="Wallets (one per currency) and their ledger")
transfers_blp = Blueprint("transfers", __name__, url_prefix="/transfers",
                          description="Transfers between wallets of one currency")
blueprints = [blp, transfers_blp]

SECURITY = [{"bearerAuth": []}]
# Argument schemas are passed as instances: given a class, webargs builds a new schema (copying
# every field) on each request.
WALLET_CREATE, PAGE_QUERY, TRANSFER_CREATE = WalletCreateSchema(), PageQuerySchema(), TransferCreateSchema()
# Decorated limits are checked inside their wrapper: listed before jwt_required, they run after it,
# so they count per user. Separate limits per method of one view need per_method=True.
read_limit = limiter.limit(limit_for("wallet_read"), methods=["GET"], per_method=True)
write_limit = limiter.limit(limit_for("wallet_write"), methods=["POST"], per_method=True)
transfer_limit = limiter.limit(limit_for("transfers"), methods=["POST"], per_method=True)


def _user_id() -> uuid.UUID:
    return uuid.UUID(get_jwt_identity())


@blp.route("/wallets")
class Wallets(MethodView):
    decorators = [read_limit, write_limit, jwt_required()]

    @blp.arguments(WALLET_CREATE)
    @blp.response(201, WalletSchema)
    @blp.alt_response(409, description="The user already has a wallet in this currency")
    @blp.doc(security=SECURITY)
    def post(self, data):
        """Open a wallet in a supported currency"""
        return service.create_wallet(user_id=_user_id(), currency=data["currency"])

    @blp.response(200, WalletSchema(many=True))
    @blp.doc(security=SECURITY)
    def get(self):
        """The caller's wallets"""
        return service.list_wallets(user_id=_user_id())


@blp.route("/wallets/<uuid:wallet_id>")
class WalletById(MethodView):
    decorators = [read_limit, jwt_required()]

    @blp.response(200, WalletSchema)
    @blp.alt_response(404, description="No such wallet of the caller")
    @blp.doc(security=SECURITY)
    def get(self, wallet_id):
        """One of the caller's wallets with its balance"""
        return service.get_wallet(user_id=_user_id(), wallet_id=wallet_id)


@blp.route("/wallets/<uuid:wallet_id>/ledger")
class WalletLedger(MethodView):
    decorators = [read_limit, jwt_required()]

    @blp.arguments(PAGE_QUERY, location="query")
    @blp.response(200, LedgerPageSchema)
    @blp.alt_response(404, description="No such wallet of the caller")
    @blp.doc(security=SECURITY)
    def get(self, query, wallet_id):
        """Ledger entries of a wallet, newest first (cursor pagination)"""
        return service.ledger_page(user_id=_user_id(), wallet_id=wallet_id, limit=query["limit"],
                                   cursor=query["cursor"])


@transfers_blp.route("")
class Transfers(MethodView):
    decorators = [transfer_limit, jwt_required()]

    @idempotent
    @transfers_blp.doc(parameters=[IDEMPOTENCY_KEY_PARAMETER], security=SECURITY)
    @transfers_blp.arguments(TRANSFER_CREATE)
    @transfers_blp.response(201, TransferSchema)
    @transfers_blp.alt_response(404, description="Source wallet not the caller's, or destination missing")
    @transfers_blp.alt_response(409, description="Idempotency-Key still in flight")
    def post(self, data):
        """Transfer between two wallets of the same currency"""
        return service.create_transfer(user_id=_user_id(), from_wallet_id=data["from_wallet_id"],
                                       to_wallet_id=data["to_wallet_id"], amount=data["amount"],
                                       reference=data["reference"], request_ref=request_reference())


@transfers_blp.route("/<uuid:transfer_id>")
class TransferById(MethodView):
    decorators = [read_limit, jwt_required()]

    @transfers_blp.response(200, TransferSchema)
    @transfers_blp.alt_response(404, description="No such transfer touching the caller's wallets")
    @transfers_blp.doc(security=SECURITY)
    def get(self, transfer_id):
        """A transfer from or to one of the caller's wallets"""
        return service.get_transfer(user_id=_user_id(), transfer_id=transfer_id)
