"""Operator actions (role ADMIN): every admin route lives here, thin like the rest (parse, call one
service function, return), so the admin access log has one place to hook."""
import uuid

from flask.views import MethodView
from flask_jwt_extended import get_jwt_identity

from wallet_api.admin import access_log
from wallet_api.admin.access_log import audited, close_access, open_access
from wallet_api.admin.schemas import (
    AccessLogPageSchema,
    AccessLogQuerySchema,
    AdminWalletPageSchema,
    AdminWalletQuerySchema,
    AlertPageSchema,
    AlertQuerySchema,
    AlertResolveSchema,
    AlertSchema,
    DlqEntrySchema,
    DlqPageSchema,
    DlqQuerySchema,
    DlqResolveSchema,
    JobRunPageSchema,
    JobRunSchema,
    JobStatusPageSchema,
)
from wallet_api.alerts import service as alerts
from wallet_api.auth.tokens import admin_required
from wallet_api.extensions import limiter
from wallet_api.idempotency import (
    IDEMPOTENCY_KEY_PARAMETER,
    idempotent,
    request_reference,
)
from wallet_api.jobs import service as jobs
from wallet_api.onramp import dead_letters
from wallet_api.pagination import Page, PageQuerySchema
from wallet_api.ratelimit import limit_for
from wallet_api.request_parsing import Blueprint
from wallet_api.wallets import ledger
from wallet_api.wallets import service as wallet_service
from wallet_api.wallets.schemas import AdjustmentCreateSchema, AdjustmentSchema

blp = Blueprint("admin", __name__, url_prefix="/admin", description="Operator actions (role ADMIN)")
blueprints = [blp]
# Every request to the admin area is recorded, refused ones included (wallet_api/admin/access_log.py).
blp.before_request(open_access)
blp.after_request(close_access)
admin_limit = limiter.limit(limit_for("admin"))
SECURITY = [{"bearerAuth": []}]


def _admin_id() -> uuid.UUID:
    return uuid.UUID(get_jwt_identity())


@blp.route("/dlq")
class DeadLetters(MethodView):
    decorators = [admin_limit, admin_required]

    @audited
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

    @audited
    @blp.arguments(DlqResolveSchema)
    @blp.response(200, DlqEntrySchema)
    @blp.alt_response(404, description="No such entry")
    @blp.alt_response(409, description="Already resolved")
    @blp.doc(security=SECURITY)
    def post(self, data, entry_id):
        """Resolve an entry with a note: replay the event, or discard it"""
        return dead_letters.resolve_dlq(entry_id=entry_id, action=data["action"], note=data["note"],
                                        admin_id=_admin_id())


# --------------------------------------------------------------------------- alerts


@blp.route("/alerts/unresolved")
class UnresolvedAlerts(MethodView):
    decorators = [admin_limit, admin_required]

    @audited
    @blp.arguments(AlertQuerySchema, location="query")
    @blp.response(200, AlertPageSchema)
    @blp.doc(security=SECURITY)
    def get(self, query):
        """Open alerts, newest first (`alertType`, `severity`, `limit`, `cursor`)"""
        return alerts.list_unresolved(alert_type=query["alert_type"], severity=query["severity"],
                                      limit=query["limit"], cursor=query["cursor"])


@blp.route("/alerts/<uuid:alert_id>")
class AlertById(MethodView):
    decorators = [admin_limit, admin_required]

    @audited
    @blp.response(200, AlertSchema)
    @blp.alt_response(404, description="No such alert")
    @blp.doc(security=SECURITY)
    def get(self, alert_id):
        """One alert, open or resolved, with its metadata"""
        return alerts.get_alert(alert_id=alert_id)


@blp.route("/alerts/<uuid:alert_id>/resolve")
class ResolveAlert(MethodView):
    decorators = [admin_limit, admin_required]

    @audited
    @blp.arguments(AlertResolveSchema)
    @blp.response(200, AlertSchema)
    @blp.alt_response(404, description="No such alert")
    @blp.alt_response(409, description="Already resolved")
    @blp.doc(security=SECURITY)
    def post(self, data, alert_id):
        """Resolve an alert with a note (who and when are recorded)"""
        return alerts.resolve_alert(alert_id=alert_id, admin_id=_admin_id(), note=data["note"])


# --------------------------------------------------------------------------- jobs


@blp.route("/jobs")
class Jobs(MethodView):
    decorators = [admin_limit, admin_required]

    @audited
    @blp.response(200, JobStatusPageSchema)
    @blp.doc(security=SECURITY)
    def get(self):
        """Every periodic job: interval, last run, last success, next scheduled run"""
        return Page(items=jobs.job_statuses(), next_cursor=None)


@blp.route("/jobs/<string:name>/run")
class RunJob(MethodView):
    decorators = [admin_limit, admin_required]

    @audited
    @blp.response(202, JobRunSchema)
    @blp.alt_response(404, description="No such job")
    @blp.alt_response(503, description="The job queue (Redis) is unavailable")
    @blp.doc(security=SECURITY)
    def post(self, name):
        """Queue one run of a job now; follow it with GET /admin/jobs/runs/<run_id>"""
        return jobs.request_run(name=name, requested_by=_admin_id())


@blp.route("/jobs/<string:name>/runs")
class JobRuns(MethodView):
    decorators = [admin_limit, admin_required]

    @audited
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, JobRunPageSchema)
    @blp.alt_response(404, description="No such job")
    @blp.doc(security=SECURITY)
    def get(self, query, name):
        """Recorded runs of one job, newest first"""
        return jobs.list_runs(job_name=name, limit=query["limit"], cursor=query["cursor"])


@blp.route("/jobs/runs/<uuid:run_id>")
class JobRunById(MethodView):
    decorators = [admin_limit, admin_required]

    @audited
    @blp.response(200, JobRunSchema)
    @blp.alt_response(404, description="No such run")
    @blp.doc(security=SECURITY)
    def get(self, run_id):
        """One recorded job run with its counts and error"""
        return jobs.get_run(run_id=run_id)


# --------------------------------------------------------------------------- wallets


@blp.route("/wallets")
class AdminWallets(MethodView):
    decorators = [admin_limit, admin_required]

    @audited
    @blp.arguments(AdminWalletQuerySchema, location="query")
    @blp.response(200, AdminWalletPageSchema)
    @blp.doc(security=SECURITY)
    def get(self, query):
        """User wallets of every user, newest first; `needs_reconciliation=true` for flagged ones"""
        return wallet_service.list_all_wallets(needs_reconciliation=query["needs_reconciliation"],
                                               limit=query["limit"], cursor=query["cursor"])


# --------------------------------------------------------------------------- the access log


@blp.route("/access-log")
class AccessLog(MethodView):
    decorators = [admin_limit, admin_required]

    @audited
    @blp.arguments(AccessLogQuerySchema, location="query")
    @blp.response(200, AccessLogPageSchema)
    @blp.doc(security=SECURITY)
    def get(self, query):
        """Every request to the admin area, allowed or refused, newest first (`admin_id`, `action`, `target`,
        `since`)"""
        return access_log.list_records(actor_id=query["admin_id"], action=query["action"], target_id=query["target"],
                                       since=query["since"], limit=query["limit"], cursor=query["cursor"])


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
    @audited
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
    @audited
    @blp.doc(**ADJUSTMENT_DOC)
    @blp.arguments(AdjustmentCreateSchema)
    @blp.response(201, AdjustmentSchema)
    @blp.alt_response(404, description="No such user wallet")
    def post(self, data, wallet_id):
        """Debit of a user wallet into the platform adjustments wallet; never below zero"""
        return _adjust(ledger.DEBIT, wallet_id, data)
