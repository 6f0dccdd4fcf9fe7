"""The console's pages: thin views over the admin API's own services and schemas.

Each view parses (the admin API's marshmallow schemas, so a note or a filter obeys the same rules
on both faces), calls service functions, and renders a template; actions answer with a redirect
(POST/redirect/GET) or, when the service refuses, the page again with the refusal and its status.
Every request is recorded in the admin access log by the admin area's own hooks (`open_access`,
`close_access`, `@audited` on every view); an action's record is written by its commit.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid

import structlog
from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError
from marshmallow import EXCLUDE, Schema, ValidationError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from wallet_api.admin import access_log
from wallet_api.admin.access_log import audited, close_access, open_access
from wallet_api.admin.console import session as operator_session
from wallet_api.admin.console.overview import overview as gather_overview
from wallet_api.admin.console.security import csrf, page_headers, safe_next
from wallet_api.admin.schemas import (AccessLogQuerySchema, AdminWalletQuerySchema, AlertQuerySchema,
                                     AlertResolveSchema, DlqQuerySchema, DlqResolveSchema)
from wallet_api.alerts import service as alerts
from wallet_api.alerts.models import AlertType, Severity
from wallet_api.auth import service as auth
from wallet_api.auth.models import Role
from wallet_api.errors import ApiError, NotFound
from wallet_api.jobs import catalog
from wallet_api.jobs import service as jobs
from wallet_api.logging import bind_user
from wallet_api.onramp import dead_letters
from wallet_api.onramp.models import DlqResolution
from wallet_api.pagination import PageQuerySchema
from wallet_api.auth.limits import auth_budget, login_failures
from wallet_api.reconciliation import ledger_checks
from wallet_api.wallets import service as wallet_service

log = structlog.get_logger(__name__)

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates")
# The stylesheet, served by the app; outside the access log (it is not an admin request).
assets = Blueprint("console_assets", __name__, url_prefix="/console", static_folder="static",
                   static_url_path="/static")

SIGN_IN_ENDPOINTS = {"console.login_form", "console.login"}
INVALID_CREDENTIALS = auth.INVALID_CREDENTIALS
RECENT_RUNS = 20


# --------------------------------------------------------------------------- every request


def _let_in():
    """before_request, after `open_access`: who is asking (the session), then the CSRF token of a form."""
    access = g.get("admin_access")
    if access is not None:
        # Console actions answer 303 (POST/redirect/GET); form fields are kept like a JSON body's.
        access.expected_status = 303 if request.method == "POST" else 200
        fields = {key: value for key, value in request.form.items() if key != "csrf_token"}
        if fields:  # cleaned by the access log's own rules: secrets (the password) redacted, long values cut
            access.meta = {**access.meta, "form": access_log._clean(fields)}
    if request.endpoint not in SIGN_IN_ENDPOINTS:
        user, problem = operator_session.current_operator()
        if user is None:
            if problem == operator_session.EXPIRED:
                flash("Your session expired; sign in again.", "error")
            target = request.full_path.rstrip("?") if request.method == "GET" else None
            return redirect(url_for("console.login_form", next=target), 303)
        if access is not None:
            access.actor_id, access.actor_role = user.id, user.role
        bind_user(user.id)
        if user.role != Role.ADMIN.value:
            operator_session.sign_out()
            return render_template("console/forbidden.html"), 403
        g.operator = user
    csrf.protect()
    return None


bp.before_request(open_access)
bp.before_request(_let_in)
bp.after_request(close_access)
bp.after_request(page_headers)


@bp.context_processor
def _operator():
    return {"operator": g.get("operator")}


@bp.errorhandler(CSRFError)
def _csrf_refused(exc: CSRFError):
    log.info("console_csrf_refused", reason=exc.description)
    return _error(400, "This form was not sent from a current console page (missing or stale security token). "
                       "Go back, reload the page and try again.")


@bp.errorhandler(ApiError)
def _service_refused(exc: ApiError):
    return _error(exc.status_code, exc.message, headers=exc.headers)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    if exc.code == 429:  # flask-limiter adds Retry-After and the X-RateLimit-* headers
        return _error(429, "Too many attempts; wait a minute and try again.")
    return _error(exc.code or 500, exc.description)


@bp.errorhandler(OperationalError)
def _database_unavailable(exc: OperationalError):
    log.error("console_database_error", exc_info=exc)
    return _error(503, "The database is unavailable or busy; retry shortly.", headers={"Retry-After": "5"})


@bp.errorhandler(Exception)
def _unexpected(exc: Exception):
    log.error("unhandled_exception", exc_info=exc)
    return _error(500, "Something went wrong on our side; the details are in the logs under this request's id.")


def _error(status: int, message: str, *, headers: dict | None = None):
    return render_template("console/error.html", status=status, message=message,
                           request_id=g.get("request_id")), status, headers or {}


# --------------------------------------------------------------------------- helpers


def _query(schema: Schema, raw: dict | None = None) -> tuple[dict, dict]:
    """Load the query string with the admin API's schema (blank fields mean "any"): (values, errors)."""
    given = {key: value for key, value in (raw if raw is not None else request.args).items() if value.strip()}
    try:
        return schema.load(given, unknown=EXCLUDE), {}
    except ValidationError as exc:
        return schema.load({}, unknown=EXCLUDE), exc.messages


def _operator_id() -> uuid.UUID:
    return g.operator.id


def _page_args(**args) -> dict:
    """The current filters without blanks, for pagination links."""
    return {key: value for key, value in args.items() if value not in (None, "")}


# --------------------------------------------------------------------------- signing in and out


@bp.get("/login")
@audited
def login_form():
    return render_template("console/login.html", next=safe_next(request.args.get("next")), email="")


@bp.post("/login")
@login_failures
@auth_budget
@audited
def login():
    email = request.form.get("email", "").strip()
    password = request.form.get("password", "")
    target = safe_next(request.form.get("next"))
    user = auth.authenticate(email=email, password=password) if email and password else None
    if user is None:
        return render_template("console/login.html", next=target, email=email, error=INVALID_CREDENTIALS), 401
    access = g.get("admin_access")
    if access is not None:
        access.actor_id, access.actor_role = user.id, user.role
    if user.role != Role.ADMIN.value:
        return render_template("console/forbidden.html"), 403
    operator_session.sign_in(user)
    return redirect(target or url_for("console.overview"), 303)


@bp.post("/logout")
@audited
def logout():
    operator_session.sign_out()
    flash("Signed out.", "ok")
    return redirect(url_for("console.login_form"), 303)


# --------------------------------------------------------------------------- overview


@bp.get("/")
@audited
def overview():
    return render_template("console/overview.html", view=gather_overview(), severities=list(Severity)[::-1])


# --------------------------------------------------------------------------- alerts


@bp.get("/alerts")
@audited
def alerts_list():
    query, errors = _query(AlertQuerySchema())
    page = alerts.list_unresolved(alert_type=query["alert_type"], severity=query["severity"], limit=query["limit"],
                                  cursor=query["cursor"])
    filters = _page_args(alertType=query["alert_type"], severity=query["severity"])
    return render_template("console/alerts.html", page=page, filters=filters, errors=errors,
                           types=[t.value for t in AlertType], severities=[s.value for s in Severity][::-1]), \
        422 if errors else 200


def _alert_page(alert_id: uuid.UUID, *, status: int = 200, errors: dict | None = None, note: str = ""):
    alert = alerts.get_alert(alert_id=alert_id)
    emails = auth.emails_by_id(user_ids={alert.resolved_by} - {None})
    return render_template("console/alert.html", alert=alert, emails=emails, errors=errors or {}, note=note,
                           runbook=RUNBOOKS.get(alert.alert_type)), status


@bp.get("/alerts/<uuid:alert_id>")
@audited
def alert(alert_id: uuid.UUID):
    return _alert_page(alert_id)


@bp.post("/alerts/<uuid:alert_id>/resolve")
@audited
def resolve_alert(alert_id: uuid.UUID):
    note = request.form.get("note", "")
    try:
        data = AlertResolveSchema().load({"note": note})
        alerts.resolve_alert(alert_id=alert_id, admin_id=_operator_id(), note=data["note"])
    except ValidationError as exc:
        return _alert_page(alert_id, status=422, errors=exc.messages, note=note)
    except ApiError as exc:
        if isinstance(exc, NotFound):
            raise
        return _alert_page(alert_id, status=exc.status_code, errors={"form": [exc.message]}, note=note)
    flash("Alert resolved.", "ok")
    return redirect(url_for("console.alert", alert_id=alert_id), 303)


RUNBOOKS = {
    AlertType.BALANCE_MISMATCH.value: "docs/RECONCILIATION.md, BALANCE_MISMATCH",
    AlertType.WEBHOOK_FAILURE.value: "docs/RECONCILIATION.md, WEBHOOK_FAILURE",
    AlertType.JOB_CRASH.value: "docs/RECONCILIATION.md, JOB_CRASH",
    AlertType.CREDIT_SPIKE.value: "docs/RECONCILIATION.md, CREDIT_SPIKE",
    AlertType.PROVIDER_MISMATCH.value: "docs/RECONCILIATION.md, PROVIDER_MISMATCH",
}


# --------------------------------------------------------------------------- dead letter queue


@bp.get("/dlq")
@audited
def dead_letters_list():
    query, errors = _query(DlqQuerySchema())
    page = dead_letters.list_dlq(resolved=query["status"] == "resolved", limit=query["limit"], cursor=query["cursor"])
    return render_template("console/dlq.html", page=page, status=query["status"], errors=errors), \
        422 if errors else 200


def _dead_letter_page(entry_id: uuid.UUID, *, status: int = 200, errors: dict | None = None,
                      form: dict | None = None):
    entry = dead_letters.get_dlq_entry(entry_id=entry_id)
    emails = auth.emails_by_id(user_ids={entry.resolved_by} - {None})
    return render_template("console/dlq_entry.html", entry=entry, payload=_pretty_json(entry.payload),
                           emails=emails, errors=errors or {}, form=form or {},
                           actions=DlqResolution.ALL), status


@bp.get("/dlq/<uuid:entry_id>")
@audited
def dead_letter(entry_id: uuid.UUID):
    return _dead_letter_page(entry_id)


@bp.post("/dlq/<uuid:entry_id>/resolve")
@audited
def resolve_dead_letter(entry_id: uuid.UUID):
    form = {"note": request.form.get("note", ""), "action": request.form.get("action", "")}
    try:
        data = DlqResolveSchema().load({key: value for key, value in form.items() if value})
        entry = dead_letters.resolve_dlq(entry_id=entry_id, action=data["action"], note=data["note"],
                                         admin_id=_operator_id())
    except ValidationError as exc:
        return _dead_letter_page(entry_id, status=422, errors=exc.messages, form=form)
    except ApiError as exc:
        if isinstance(exc, NotFound):
            raise
        return _dead_letter_page(entry_id, status=exc.status_code, errors={"form": [exc.message]}, form=form)
    if entry.resolution == DlqResolution.REPLAY:
        flash("Replayed: the event is queued again and will be processed by a worker (credited at most once).", "ok")
    else:
        flash("Discarded: the event stays parked and will not be processed.", "ok")
    return redirect(url_for("console.dead_letter", entry_id=entry_id), 303)


def _pretty_json(text: str) -> str:
    """The payload indented for reading, every number written exactly as received; as is if not JSON."""
    try:
        parsed = json.loads(text, parse_float=_Verbatim, parse_int=_Verbatim)
    except ValueError:
        return text
    return _dump(parsed)


class _Verbatim(str):
    """A JSON number kept as the text it arrived as."""


def _dump(value, indent: int = 0) -> str:
    pad = "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}{json.dumps(key)}: {_dump(item, indent + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(pad + _dump(item, indent + 1) for item in value) + "\n" + "  " * indent + "]"
    if isinstance(value, _Verbatim):
        return str(value)
    return json.dumps(value)


# --------------------------------------------------------------------------- wallets


@bp.get("/wallets")
@audited
def wallets_list():
    search = request.args.get("q", "").strip()
    found, search_error = [], None
    if search:
        try:
            wallet_id = uuid.UUID(search)
        except ValueError:
            wallet_id = None
        if wallet_id is not None:
            try:
                wallet_service.get_user_wallet(wallet_id=wallet_id)
            except NotFound:
                search_error = "No user wallet has this id."
            else:
                return redirect(url_for("console.wallet", wallet_id=wallet_id))
        else:
            owner = auth.find_user_by_email(email=search)
            found = wallet_service.list_wallets(user_id=owner.id) if owner is not None else []
            if owner is None:
                search_error = "No user has this email address."
            elif not found:
                search_error = "This user has no wallet."
    raw = {key: value for key, value in request.args.items() if key != "q"}
    query, errors = _query(AdminWalletQuerySchema(), raw)
    page = wallet_service.list_all_wallets(needs_reconciliation=query["needs_reconciliation"], limit=query["limit"],
                                           cursor=query["cursor"])
    emails = auth.emails_by_id(user_ids={wallet.user_id for wallet in [*found, *page.items]})
    flagged = query["needs_reconciliation"]
    status = 404 if search_error else 422 if errors else 200
    return render_template("console/wallets.html", page=page, found=found, search=search, search_error=search_error,
                           emails=emails, errors=errors,
                           filters=_page_args(needs_reconciliation=None if flagged is None else str(flagged).lower())
                           ), status


@bp.get("/wallets/<uuid:wallet_id>")
@audited
def wallet(wallet_id: uuid.UUID):
    query, errors = _query(PageQuerySchema())
    if errors:
        query = {**query, "cursor": None}
    wallet_row = wallet_service.get_user_wallet(wallet_id=wallet_id)
    ledger = wallet_service.ledger_page_of_user_wallet(wallet_id=wallet_id, limit=query["limit"],
                                                      cursor=query["cursor"])
    balances = list(ledger_checks.stream_wallet_balances(wallet_id=wallet_id))
    owner = auth.emails_by_id(user_ids={wallet_row.user_id}).get(wallet_row.user_id)
    return render_template("console/wallet.html", wallet=wallet_row, owner=owner, ledger=ledger,
                           check=balances[0] if balances else None, errors=errors,
                           first_page=query["cursor"] is None), 422 if errors else 200


# --------------------------------------------------------------------------- jobs


def _jobs_page(*, status: int = 200, error: str | None = None):
    return render_template("console/jobs.html", jobs=jobs.job_statuses(), cli_jobs=catalog.CLI_JOBS,
                           error=error), status


@bp.get("/jobs")
@audited
def jobs_list():
    return _jobs_page()


@bp.get("/jobs/<string:name>")
@audited
def job(name: str):
    query, errors = _query(PageQuerySchema())
    if errors:
        query = {**query, "cursor": None}
    runs = jobs.list_runs(job_name=name, limit=query["limit"], cursor=query["cursor"])
    status = next((job for job in jobs.job_statuses() if job.name == name), None)
    emails = auth.emails_by_id(user_ids={run.requested_by for run in runs.items} - {None})
    return render_template("console/job.html", name=name, job=status, runs=runs, emails=emails, errors=errors,
                           runnable=catalog.get(name) is not None), 422 if errors else 200


@bp.post("/jobs/<string:name>/run")
@audited
def run_job(name: str):
    try:
        run = jobs.request_run(name=name, requested_by=_operator_id())
    except ApiError as exc:
        if isinstance(exc, NotFound):
            raise
        return _jobs_page(status=exc.status_code, error=exc.message)
    flash(f"Run {run.id} of {name} is queued; a worker picks it up shortly.", "ok")
    return redirect(url_for("console.job", name=name), 303)


@bp.get("/jobs/runs/<uuid:run_id>")
@audited
def job_run(run_id: uuid.UUID):
    run = jobs.get_run(run_id=run_id)
    emails = auth.emails_by_id(user_ids={run.requested_by} - {None})
    return render_template("console/job_run.html", run=run, emails=emails)


# --------------------------------------------------------------------------- the access log


@bp.get("/access-log")
@audited
def access_log_list():
    raw = {key: value for key, value in request.args.items() if key not in ("admin", "since")}
    errors: dict = {}
    admin = request.args.get("admin", "").strip()
    if admin:
        try:
            raw["admin_id"] = str(uuid.UUID(admin))
        except ValueError:
            found = auth.find_user_by_email(email=admin)
            if found is None:
                errors["admin"] = ["No user has this email address."]
            else:
                raw["admin_id"] = str(found.id)
    since = request.args.get("since", "").strip()
    if since:
        raw["since"] = _as_utc(since)
    query, schema_errors = _query(AccessLogQuerySchema(), raw)
    errors.update(schema_errors)
    if errors:
        page = access_log.list_records(actor_id=None, action=None, target_id=None, since=None,
                                       limit=query["limit"], cursor=None)
    else:
        page = access_log.list_records(actor_id=query["admin_id"], action=query["action"], target_id=query["target"],
                                       since=query["since"], limit=query["limit"], cursor=query["cursor"])
    emails = auth.emails_by_id(user_ids={row.actor_id for row in page.items} - {None})
    filters = _page_args(admin=admin, action=query["action"], target=query["target"], since=since)
    return render_template("console/access_log.html", page=page, emails=emails, errors=errors, filters=filters,
                           actions=sorted(_known_actions())), 422 if errors else 200


def _as_utc(text: str) -> str:
    """A time typed without a zone (an <input type=datetime-local>) is read as UTC."""
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return text  # the schema reports it
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)).isoformat()


def _known_actions() -> set[str]:
    return {endpoint for endpoint in current_app.view_functions
            if endpoint.startswith(("admin.", "console.")) and endpoint != "console_assets.static"}
