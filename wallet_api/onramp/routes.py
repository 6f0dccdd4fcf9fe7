"""On-ramp sessions and transactions for users, and MoonPay's webhook (thin: parse, call, return)."""
import time
import uuid

import structlog
from flask import current_app, request
from flask.views import MethodView
from flask_jwt_extended import get_jwt_identity, jwt_required

from wallet_api.client_address import IpAllowlist
from wallet_api.errors import ApiError, BadRequest, Forbidden, Unauthorized
from wallet_api.extensions import limiter
from wallet_api.metrics import record_webhook
from wallet_api.onramp import intake, moonpay, service
from wallet_api.onramp.schemas import (
    CreateSessionSchema,
    OnrampTransactionPageSchema,
    OnrampTransactionSchema,
    SessionSchema,
    WebhookAckSchema,
)
from wallet_api.onramp.signature import SignatureError, verify_webhook_signature
from wallet_api.pagination import PageQuerySchema
from wallet_api.ratelimit import limit_for
from wallet_api.request_parsing import Blueprint

log = structlog.get_logger(__name__)

blp = Blueprint("onramp", __name__, url_prefix="/onramp", description="Buy crypto with fiat through MoonPay")
webhooks = Blueprint("webhooks", __name__, url_prefix="/webhooks",
                     description="Provider webhooks (signature-verified, never rate limited)")
limiter.exempt(webhooks)
blueprints = [blp, webhooks]
# One budget (RATELIMIT_ONRAMP, 15/min) shared by every on-ramp route. Listed before jwt_required in
# `decorators`, the limit runs after it and counts per user.
onramp_limit = limiter.shared_limit(limit_for("onramp"), scope="onramp")
SIGNATURE_HEADER = "Moonpay-Signature-V2"


def _user_id() -> uuid.UUID:
    return uuid.UUID(get_jwt_identity())


@blp.route("/sessions")
class Sessions(MethodView):
    decorators = [onramp_limit, jwt_required()]

    @blp.arguments(CreateSessionSchema)
    @blp.response(201, SessionSchema)
    @blp.alt_response(404, description="Wallet not found (or another user's)")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self, data):
        """Start a purchase into one of your crypto wallets; open `widget_url` to pay at MoonPay"""
        return service.create_session(user_id=_user_id(), wallet_id=data["wallet_id"],
                                      base_currency=data["base_currency"], base_amount=data["base_amount"])


@blp.route("/transactions")
class Transactions(MethodView):
    decorators = [onramp_limit, jwt_required()]

    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, OnrampTransactionPageSchema)
    @blp.doc(security=[{"bearerAuth": []}])
    def get(self, query):
        """Your on-ramp transactions, newest first (`limit`, `cursor`)"""
        return service.list_transactions(user_id=_user_id(), limit=query["limit"], cursor=query["cursor"])


@blp.route("/transactions/<uuid:transaction_id>")
class Transaction(MethodView):
    decorators = [onramp_limit, jwt_required()]

    @blp.response(200, OnrampTransactionSchema)
    @blp.alt_response(404, description="Not found (or another user's)")
    @blp.doc(security=[{"bearerAuth": []}])
    def get(self, transaction_id):
        """One of your on-ramp transactions"""
        return service.get_transaction(user_id=_user_id(), transaction_id=transaction_id)


# --------------------------------------------------------------------------- the webhook


class PayloadTooLarge(ApiError):
    status_code, error = 413, "payload_too_large"


def _refuse(outcome: str, exc: ApiError, started: float, **details) -> ApiError:
    record_webhook(provider=moonpay.PROVIDER, stage="receive", outcome=outcome,
                   duration_s=time.perf_counter() - started)
    log.warning("webhook_refused", provider=moonpay.PROVIDER, outcome=outcome,
                remote_addr=request.remote_addr, **details)
    return exc


def _allowlist() -> IpAllowlist:
    ext = current_app.extensions
    if "webhook_ip_allowlist" not in ext:
        ext["webhook_ip_allowlist"] = IpAllowlist.parse(current_app.config["SETTINGS"].webhook_allowed_ips)
    return ext["webhook_ip_allowlist"]


def _read_body(limit: int) -> bytes | None:
    """The raw body, or None when it is longer than `limit` (whatever Content-Length claimed)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    stream = request.stream
    chunks, size = [], 0
    while True:
        chunk = stream.read(min(65536, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None


@webhooks.route("/moonpay")
class MoonPayWebhook(MethodView):
    @webhooks.response(200, WebhookAckSchema)
    @webhooks.alt_response(400, description="Malformed body")
    @webhooks.alt_response(401, description="Missing, invalid or stale Moonpay-Signature-V2")
    @webhooks.alt_response(403, description="Source IP not in WEBHOOK_ALLOWED_IPS")
    @webhooks.alt_response(413, description="Body larger than WEBHOOK_MAX_BODY_BYTES")
    @webhooks.doc(parameters=[{"in": "header", "name": SIGNATURE_HEADER, "required": True,
                               "schema": {"type": "string"}, "description": "t=<unix seconds>,s=<hex HMAC>"}],
                  requestBody={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}})
    def post(self):
        """MoonPay transaction events: verified, stored once, processed asynchronously"""
        started = time.perf_counter()
        settings = current_app.config["SETTINGS"]
        if settings.webhook_ip_allowlist_enforced and not _allowlist().allows(request.remote_addr or ""):
            raise _refuse("ip_forbidden", Forbidden("Source address not allowed.", error="ip_not_allowed"), started)

        raw = _read_body(settings.webhook_max_body_bytes)
        if raw is None:
            raise _refuse("too_large", PayloadTooLarge(
                f"Webhook bodies are limited to {settings.webhook_max_body_bytes} bytes."), started)
        try:
            verify_webhook_signature(header=request.headers.get(SIGNATURE_HEADER), body=raw,
                                     secret=settings.moonpay_webhook_secret,
                                     tolerance_seconds=settings.webhook_signature_tolerance_seconds,
                                     now=time.time())
        except SignatureError as exc:
            raise _refuse(exc.reason, Unauthorized("Invalid webhook signature.", error="invalid_signature"),
                          started) from None
        try:
            parsed = intake.parse_webhook_body(raw)
        except intake.WebhookBodyError as exc:
            raise _refuse("invalid_body", BadRequest("Malformed webhook body.", error="invalid_webhook",
                                                     errors={"json": exc.errors}),
                          started, errors=exc.errors) from None

        result = intake.receive_moonpay_webhook(parsed=parsed)
        outcome = "duplicate" if result.duplicate else ("accepted" if result.enqueued else "accepted_not_enqueued")
        record_webhook(provider=moonpay.PROVIDER, stage="receive", outcome=outcome,
                       duration_s=time.perf_counter() - started)
        log.info("webhook_received", provider=moonpay.PROVIDER, outcome=outcome,
                 event_id=str(result.event_id) if result.event_id else None,
                 external_id=parsed.transaction.id, external_status=parsed.transaction.status,
                 event_type=parsed.event_type)
        return {"received": True, "duplicate": True} if result.duplicate else {"received": True}
