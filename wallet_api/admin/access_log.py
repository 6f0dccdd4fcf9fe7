"""Recording every admin request, allowed or refused, in the append-only admin access log.

    blp.before_request(open_access)     # who, what, on what, from where
    blp.after_request(close_access)     # refusals and read-only calls: recorded with their status
    @audited                            # on each admin view: its commits carry the record

An action that commits is recorded *in its own transaction*: while an `@audited` view runs, the
first COMMIT of the request's database session adds the record (a `before_commit` hook), so there
is no committed action without its record and no record of an action that rolled back. Anything
else (401, 403, 429, a validation error, a 404, a read) is recorded once the response is known,
on its own. Should the answer differ from the status recorded at commit time (a failure after
the commit), a second record says so. Metadata keeps the request's arguments, not its secrets:
keys that look secret are redacted and long values cut.
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from functools import wraps

import structlog
from flask import current_app, g, has_request_context, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from wallet_api import audit
from wallet_api.admin.models import AdminAccessLog
from wallet_api.extensions import db
from wallet_api.log_sanitiser import REDACTED, looks_secret
from wallet_api.pagination import Page, keyset_page
from wallet_api.request_parsing import storable

log = structlog.get_logger(__name__)

MAX_VALUE_LENGTH = 200
MAX_KEYS = 20


@dataclass
class Access:
    action: str
    method: str
    path: str
    target_id: str | None
    meta: dict
    ip: str | None
    user_agent: str | None
    request_id: str | None
    expected_status: int
    actor_id: uuid.UUID | None = None
    actor_role: str | None = None
    armed: bool = False
    recorded: list[uuid.UUID] = field(default_factory=list)

    def record(self, status_code: int, **extra) -> AdminAccessLog:
        # A refused request is recorded as sent, except for what PostgreSQL cannot hold (NUL, lone surrogates).
        return AdminAccessLog(
            id=uuid.uuid4(), actor_id=self.actor_id, actor_role=self.actor_role, action=self.action,
            method=self.method, path=storable(self.path[:2000]), target_id=_storable_or_none(self.target_id, 255),
            meta={**self.meta, **extra}, ip=self.ip, user_agent=_storable_or_none(self.user_agent, 255),
            request_id=self.request_id, status_code=status_code)


def open_access() -> None:
    """before_request of the admin area: note who asks what, before any check can refuse it."""
    actor_id = actor_role = None
    try:
        verify_jwt_in_request(optional=True)
        claims = get_jwt()
        if claims.get("sub"):
            actor_id, actor_role = uuid.UUID(claims["sub"]), claims.get("role")
    except Exception:  # noqa: BLE001 - a bad token is refused by the route; here it is only "unknown"
        pass
    view_args = request.view_args or {}
    g.admin_access = Access(
        action=request.endpoint or "unknown", method=request.method, path=request.path,
        target_id=str(next(iter(view_args.values()))) if view_args else None,
        meta=_sanitised_arguments(), ip=request.remote_addr,
        user_agent=request.user_agent.string or None, request_id=g.get("request_id"),
        expected_status=_success_status(), actor_id=actor_id, actor_role=actor_role)


def audited(view):
    """Mark the view whose commits are the admin action (see the module docstring)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        access = g.get("admin_access")
        if access is not None:
            access.armed = True
        try:
            return view(*args, **kwargs)
        finally:
            if access is not None:
                access.armed = False

    wrapper.audited = True
    return wrapper


def close_access(response):
    """after_request of the admin area: record what was not recorded with a commit."""
    access = g.pop("admin_access", None)
    if access is None:
        return response
    try:
        if not access.recorded:
            _write(access.record(response.status_code))
        elif response.status_code != access.expected_status:
            _write(access.record(response.status_code, amends=str(access.recorded[0]),
                                 recorded_status=access.expected_status))
    except Exception:  # noqa: BLE001 - the answer stands; the failure to record it is an error to look at
        db.session.rollback()
        log.exception("admin_access_not_recorded", action=access.action, status=response.status_code)
    audit.admin_action(admin_id=access.actor_id, action=access.action, target=access.target_id,
                       outcome=audit.outcome_of(response.status_code), status=response.status_code,
                       method=access.method, role=access.actor_role)
    return response


@event.listens_for(Session, "before_commit")
def _record_with_the_action(session: Session) -> None:
    if not has_request_context():
        return
    access = g.get("admin_access")
    if access is None or not access.armed or access.recorded or session is not db.session():
        return
    row = access.record(access.expected_status)
    session.add(row)
    access.recorded.append(row.id)


def _write(row: AdminAccessLog) -> None:
    db.session.rollback()  # whatever a refused or failed request left behind is not ours to commit
    db.session.add(row)
    db.session.commit()


def _success_status() -> int:
    view = request.url_rule and request.url_rule.endpoint and _method_of_view()
    codes = getattr(view, "_apidoc", {}).get("success_status_codes") if view else None
    return int(codes[0]) if codes else 200


def _method_of_view():
    view = current_app.view_functions.get(request.endpoint)
    view_class = getattr(view, "view_class", None)
    return getattr(view_class, request.method.lower(), None) if view_class else view


def _sanitised_arguments() -> dict:
    found = {}
    if request.args:
        found["query"] = _clean({k: v for k, v in list(request.args.items())[:MAX_KEYS]})
    body = request.get_json(silent=True) if request.is_json else None
    if isinstance(body, dict):
        found["body"] = _clean(dict(list(body.items())[:MAX_KEYS]))
    return found


def _clean(values: dict) -> dict:
    cleaned = {}
    for key, value in values.items():
        key = storable(str(key)[:64])
        if looks_secret(key):
            cleaned[key] = REDACTED
        elif isinstance(value, (dict, list)):
            cleaned[key] = "[structure]"
        else:
            text = storable(str(value))
            cleaned[key] = text if len(text) <= MAX_VALUE_LENGTH else text[:MAX_VALUE_LENGTH] + "..."
    return cleaned


def _storable_or_none(value: str | None, length: int) -> str | None:
    return storable(value)[:length] if value is not None else None


def list_records(*, actor_id: uuid.UUID | None, action: str | None, target_id: str | None, since: dt.datetime | None,
                 limit: int, cursor: str | None) -> Page:
    """Access records, newest first, filtered by who, which action, which target and from when."""
    query = select(AdminAccessLog)
    if actor_id is not None:
        query = query.where(AdminAccessLog.actor_id == actor_id)
    if action:
        query = query.where(AdminAccessLog.action == action)
    if target_id:
        query = query.where(AdminAccessLog.target_id == target_id)
    if since is not None:
        query = query.where(AdminAccessLog.created_at >= since)
    return keyset_page(query, AdminAccessLog, limit=limit, cursor=cursor)
