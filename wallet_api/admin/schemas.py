"""Request and response shapes of the admin API."""
from marshmallow import Schema, fields, validate

from wallet_api.alerts.models import AlertType, Severity
from wallet_api.jobs.models import RunStatus, Trigger
from wallet_api.onramp.models import DlqResolution
from wallet_api.pagination import PageQuerySchema, page_schema
from wallet_api.request_parsing import UtcDateTime
from wallet_api.wallets.schemas import NOT_BLANK_PATTERN, MoneyField, not_blank

MAX_NOTE_LENGTH = 2000


def note_field(description: str) -> fields.String:
    """A required human note: 1..2000 characters, not only whitespace."""
    return fields.String(required=True, validate=[validate.Length(min=1, max=MAX_NOTE_LENGTH), not_blank()],
                         metadata={"description": description, "pattern": NOT_BLANK_PATTERN})


class DlqQuerySchema(PageQuerySchema):
    status = fields.String(load_default="unresolved", validate=validate.OneOf(["unresolved", "resolved"]))


class DlqEntrySchema(Schema):
    id = fields.UUID(dump_only=True)
    provider = fields.String(dump_only=True)
    external_id = fields.String(dump_only=True)
    event_id = fields.UUID(dump_only=True)
    event_type = fields.String(dump_only=True)
    payload = fields.String(dump_only=True, metadata={
        "description": "The event body exactly as received (JSON text; amounts keep every digit)"})
    failure_reason = fields.String(dump_only=True)
    attempts = fields.Integer(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    status = fields.Function(lambda e: "unresolved" if e.resolved_at is None else "resolved")
    resolved_at = fields.DateTime(dump_only=True, allow_none=True)
    resolved_by = fields.UUID(dump_only=True, allow_none=True)
    resolution = fields.String(dump_only=True, allow_none=True)
    resolution_note = fields.String(dump_only=True, allow_none=True)


DlqPageSchema = page_schema(DlqEntrySchema, "DlqPage")


class DlqResolveSchema(Schema):
    note = note_field("Why this entry is resolved this way (kept with the entry)")
    action = fields.String(required=True, validate=validate.OneOf(DlqResolution.ALL), metadata={
        "description": "replay: reset the event and process it again (credits at most once); "
                       "discard: close the entry, leave the event parked"})


# --- alerts -------------------------------------------------------------------------------------


class AlertQuerySchema(PageQuerySchema):
    alert_type = fields.String(data_key="alertType", load_default=None,
                               validate=validate.OneOf([t.value for t in AlertType]))
    severity = fields.String(load_default=None, validate=validate.OneOf([s.value for s in Severity]))


class AlertSchema(Schema):
    id = fields.UUID(dump_only=True)
    alert_type = fields.String(dump_only=True, metadata={"enum": [t.value for t in AlertType]})
    severity = fields.String(dump_only=True, metadata={"enum": [s.value for s in Severity]})
    subject = fields.String(dump_only=True, metadata={"description": "What the alert is about, e.g. wallet:<id>; "
                                                                     "at most one open alert per type and subject"})
    title = fields.String(dump_only=True)
    message = fields.String(dump_only=True)
    metadata = fields.Dict(dump_only=True, attribute="meta",
                           metadata={"description": "Details by alert type; amounts are decimal strings"})
    occurrences = fields.Integer(dump_only=True, metadata={"description": "How often it was raised while open"})
    created_at = fields.DateTime(dump_only=True)
    last_seen_at = fields.DateTime(dump_only=True)
    notified_at = fields.DateTime(dump_only=True, allow_none=True)
    resolved = fields.Boolean(dump_only=True)
    resolved_at = fields.DateTime(dump_only=True, allow_none=True)
    resolved_by = fields.UUID(dump_only=True, allow_none=True)
    resolution_note = fields.String(dump_only=True, allow_none=True)


AlertPageSchema = page_schema(AlertSchema, "AlertPage")


class AlertResolveSchema(Schema):
    note = note_field("What was found and done (kept with the alert)")


# --- jobs ---------------------------------------------------------------------------------------


class JobRunSchema(Schema):
    id = fields.UUID(dump_only=True)
    run_id = fields.UUID(dump_only=True, attribute="id")
    job_name = fields.String(dump_only=True)
    trigger = fields.String(dump_only=True, metadata={"enum": list(Trigger.ALL)})
    status = fields.String(dump_only=True, metadata={"enum": list(RunStatus.ALL)})
    requested_by = fields.UUID(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    started_at = fields.DateTime(dump_only=True, allow_none=True)
    finished_at = fields.DateTime(dump_only=True, allow_none=True)
    counts = fields.Dict(dump_only=True)
    error = fields.String(dump_only=True, allow_none=True)


JobRunPageSchema = page_schema(JobRunSchema, "JobRunPage")


class JobStatusSchema(Schema):
    name = fields.String(dump_only=True)
    description = fields.String(dump_only=True)
    interval_seconds = fields.Integer(dump_only=True)
    enabled = fields.Boolean(dump_only=True)
    last_run = fields.Nested(JobRunSchema, dump_only=True, allow_none=True)
    last_success_at = fields.DateTime(dump_only=True, allow_none=True)
    next_run_at = fields.DateTime(dump_only=True, allow_none=True,
                                  metadata={"description": "From the scheduler; null while Redis is unreachable"})


JobStatusPageSchema = page_schema(JobStatusSchema, "JobStatusPage")


# --- wallets ------------------------------------------------------------------------------------


class AdminWalletQuerySchema(PageQuerySchema):
    needs_reconciliation = fields.Boolean(load_default=None, metadata={
        "description": "true: only wallets flagged by reconciliation; false: only unflagged ones"})


class AdminWalletSchema(Schema):
    id = fields.UUID(dump_only=True)
    user_id = fields.UUID(dump_only=True)
    currency = fields.String(dump_only=True)
    balance = MoneyField()
    needs_reconciliation = fields.Boolean(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


AdminWalletPageSchema = page_schema(AdminWalletSchema, "AdminWalletPage")


# --- the access log -------------------------------------------------------------------------------


class AccessLogQuerySchema(PageQuerySchema):
    admin_id = fields.UUID(load_default=None, metadata={"description": "Who called (the token's user)"})
    action = fields.String(load_default=None, validate=validate.Length(min=1, max=128),
                           metadata={"description": "The route's name, e.g. admin.ResolveAlert"})
    target = fields.String(load_default=None, validate=validate.Length(min=1, max=255),
                           metadata={"description": "The id in the path (wallet, alert, entry, job...)"})
    since = UtcDateTime(load_default=None, metadata={"description": "ISO 8601 with a time zone"})


class AccessLogSchema(Schema):
    id = fields.UUID(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    admin_id = fields.UUID(dump_only=True, allow_none=True, attribute="actor_id")
    actor_role = fields.String(dump_only=True, allow_none=True)
    action = fields.String(dump_only=True)
    method = fields.String(dump_only=True)
    path = fields.String(dump_only=True)
    target_id = fields.String(dump_only=True, allow_none=True)
    metadata = fields.Dict(dump_only=True, attribute="meta")
    ip = fields.String(dump_only=True, allow_none=True)
    user_agent = fields.String(dump_only=True, allow_none=True)
    request_id = fields.String(dump_only=True, allow_none=True)
    status_code = fields.Integer(dump_only=True)


AccessLogPageSchema = page_schema(AccessLogSchema, "AccessLogPage")
