from marshmallow import Schema, fields, validate

from wallet_api.onramp.models import DlqResolution
from wallet_api.pagination import PageQuerySchema, page_schema


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
    note = fields.String(required=True, validate=validate.Length(min=1, max=2000))
    action = fields.String(required=True, validate=validate.OneOf(DlqResolution.ALL), metadata={
        "description": "replay: reset the event and process it again (credits at most once); "
                       "discard: close the entry, leave the event parked"})
