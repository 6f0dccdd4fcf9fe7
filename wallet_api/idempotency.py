"""The API `Idempotency-Key` header (Stripe's model), for any POST route of an authenticated user.

    @blp.route("/transfers")
    class Transfers(MethodView):
        decorators = [limiter.limit(...), jwt_required()]

        @idempotent                                   # outermost: sees the finished response
        @blp.doc(parameters=[IDEMPOTENCY_KEY_PARAMETER])
        @blp.arguments(TransferCreateSchema)
        @blp.response(201, TransferSchema)
        def post(self, data):
            return service.create_transfer(..., request_ref=request_reference())

How it works, per (user, key):
1. Claim: one short committed transaction runs INSERT ... ON CONFLICT (user_id, key) DO UPDATE
   ... WHERE the existing row has expired. It stores the request's fingerprint (sha256 of method,
   path and canonical JSON body) with status `in_flight`. Exactly one concurrent request wins.
2. A losing request reads the existing row: another body -> 422 `idempotency_key_reused`;
   `completed` -> the stored status and body again with `Idempotent-Replayed: true`;
   `in_flight` -> 409 `idempotency_key_in_flight`.
3. The winner runs the view. A success stores status and body (`completed`). A failure (any
   exception, or a 4xx/5xx response) deletes the in-flight row so the client can retry.
4. Rows expire after settings.idempotency_key_ttl_hours; an expired row is replaced by the next
   claim. `purge_expired` deletes them in bulk (for a periodic job).

The header protects the response; the ledger's own keys protect the money. `request_reference()`
derives a stable operation reference from (user, key, fingerprint), and money-moving services
build their ledger idempotency keys from it. So if a process dies after the ledger commit but
before the response is stored (the row stays `in_flight`), a retry after IN_FLIGHT_RECLAIM_AFTER
reclaims the row, runs the operation again, gets the ledger's replay of the first result and
stores it: the money moves once and the client is never stuck behind a dead request. One
consequence: the same key with the same body *after expiry* answers with the original operation
again instead of repeating it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from functools import wraps

import structlog
from flask import current_app, g, request
from flask_jwt_extended import get_jwt_identity
from sqlalchemy import (DateTime, ForeignKey, Index, Integer, Interval, String, Text, Uuid, bindparam, delete, func,
                        select, update)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Mapped, mapped_column

from wallet_api.db_types import timestamp_column, uuid_pk
from wallet_api.errors import BadRequest, Conflict, Unprocessable
from wallet_api.extensions import db

log = structlog.get_logger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
KEY_PATTERN = re.compile(r"[\x20-\x7e]{1,%d}" % MAX_KEY_LENGTH)  # printable ASCII, space included
# Longer than any request can live (gunicorn's timeout, statement and lock timeouts): an in-flight
# row older than this belongs to a process that died, and the same request may take it over.
IN_FLIGHT_RECLAIM_AFTER = dt.timedelta(minutes=2)
IN_FLIGHT, COMPLETED = "in_flight", "completed"

IDEMPOTENCY_KEY_PARAMETER = {
    "in": "header", "name": HEADER, "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
    "description": "Printable ASCII, 1..255 characters, unique per operation (e.g. a UUID). The same key "
                   "with the same body replays the first response (header Idempotent-Replayed: true); "
                   "with another body it is 422; while the first request runs it is 409.",
}

class IdempotencyRecord(db.Model):
    """An API `Idempotency-Key` (Stripe's model): the request's fingerprint and its stored response."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        Index("uq_idempotency_keys_user_key", "user_id", "key", unique=True),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="in_flight")
    response_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict | None] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = timestamp_column()
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


_table = IdempotencyRecord.__table__


class InvalidIdempotencyKey(BadRequest):
    error = "invalid_idempotency_key"


class IdempotencyKeyReused(Unprocessable):
    error = "idempotency_key_reused"


class IdempotencyKeyInFlight(Conflict):
    error = "idempotency_key_in_flight"


@dataclass(frozen=True)
class Claim:
    """This request owns the key: run the operation, then `complete` or `release`."""

    record_id: uuid.UUID
    user_id: uuid.UUID
    key: str
    fingerprint: str

    @property
    def reference(self) -> str:
        """Stable for (user, key, body): the operation reference for ledger idempotency keys."""
        digest = hashlib.sha256(f"{self.user_id}\n{self.key}\n{self.fingerprint}".encode()).hexdigest()
        return f"idem-{digest[:40]}"


@dataclass(frozen=True)
class StoredResponse:
    """An earlier request with this key completed: replay this."""

    status_code: int
    body: object


def idempotent(view):
    """Honour `Idempotency-Key` on a view run by an authenticated user (put it outermost)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        identity = get_jwt_identity()
        if identity is None:
            raise RuntimeError("@idempotent needs an authenticated request (jwt_required)")
        outcome = claim(user_id=uuid.UUID(identity), key=key, method=request.method, path=request.path,
                        fingerprint=fingerprint(request.method, request.path, request.get_data(cache=True)))
        if isinstance(outcome, StoredResponse):
            return replay_response(outcome)
        g.idempotency_claim = outcome
        try:
            response = current_app.make_response(view(*args, **kwargs))
        except BaseException:
            release(outcome)
            raise
        if response.status_code >= 400:
            release(outcome)
        else:
            complete(outcome, status_code=response.status_code,
                     body=response.get_json(silent=True) if response.is_json else None)
        return response

    return wrapper


def request_reference() -> str | None:
    """The current request's stable operation reference when it carries an Idempotency-Key, else None."""
    found = g.get("idempotency_claim")
    return found.reference if found is not None else None


def validate_key(key: str) -> str:
    if not KEY_PATTERN.fullmatch(key or ""):
        raise InvalidIdempotencyKey(
            f"The {HEADER} header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.")
    return key


def fingerprint(method: str, path: str, body: bytes) -> str:
    """sha256 of method, path and the body as canonical JSON (key order and spacing do not matter)."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON (or empty, or absurdly deep): the raw bytes are the body
        canonical = "raw:" + body.hex()
    # surrogatepass: a lone surrogate in the body must hash, not crash; the route's schema refuses it next.
    return hashlib.sha256(f"{method.upper()}\n{path}\n{canonical}".encode("utf-8", "surrogatepass")).hexdigest()


# Built once, with bound parameters: the request path pays for no statement construction, cache
# key or compilation (building them per call cost about as much as the rest of the request).
_claim_insert = pg_insert(_table).values(
    id=bindparam("record_id"), user_id=bindparam("user_id"), key=bindparam("key"), method=bindparam("method"),
    path=bindparam("path"), fingerprint=bindparam("fingerprint"), status=IN_FLIGHT,
    expires_at=func.now() + bindparam("ttl", type_=Interval()))
_CLAIM = _claim_insert.on_conflict_do_update(
    index_elements=[_table.c.user_id, _table.c.key],
    set_={"id": _claim_insert.excluded.id, "method": _claim_insert.excluded.method,
          "path": _claim_insert.excluded.path, "fingerprint": _claim_insert.excluded.fingerprint,
          "status": IN_FLIGHT, "response_code": None, "response_body": None,
          "created_at": func.now(), "expires_at": _claim_insert.excluded.expires_at},
    where=_table.c.expires_at <= func.now(),  # only an expired key may be replaced
).returning(_table.c.id)
_EXISTING = (
    select(_table.c.id, _table.c.fingerprint, _table.c.status, _table.c.response_code, _table.c.response_body,
           _table.c.created_at < func.now() - IN_FLIGHT_RECLAIM_AFTER)
    .where(_table.c.user_id == bindparam("user_id"), _table.c.key == bindparam("key")))
_TAKE_OVER = (
    update(_table)
    .where(_table.c.id == bindparam("record_id"), _table.c.status == IN_FLIGHT,
           _table.c.created_at < func.now() - IN_FLIGHT_RECLAIM_AFTER)
    .values(created_at=func.now())
    .returning(_table.c.id))
_COMPLETE = (
    update(_table).where(_table.c.id == bindparam("record_id"))
    .values(status=COMPLETED, response_code=bindparam("code"), response_body=bindparam("body", type_=JSONB)))
_RELEASE = delete(_table).where(_table.c.id == bindparam("record_id"), _table.c.status == IN_FLIGHT)


def claim(*, user_id: uuid.UUID, key: str, method: str, path: str, fingerprint: str) -> Claim | StoredResponse:
    """Claim `key` for this request (committed at once), or return the stored response; 409/422 otherwise."""
    validate_key(key)
    ttl = dt.timedelta(hours=current_app.config["SETTINGS"].idempotency_key_ttl_hours)
    session = db.session
    for _attempt in range(3):
        won = session.execute(_CLAIM, {
            "record_id": uuid.uuid4(), "user_id": user_id, "key": key, "method": method, "path": path,
            "fingerprint": fingerprint, "ttl": ttl}).scalar_one_or_none()
        if won is not None:
            session.commit()
            return Claim(record_id=won, user_id=user_id, key=key, fingerprint=fingerprint)
        existing = session.execute(_EXISTING, {"user_id": user_id, "key": key}).one_or_none()
        if existing is None:  # released between our insert and this read: try again
            session.commit()
            continue
        record_id, stored_fingerprint, status, code, body, abandoned = existing
        if stored_fingerprint != fingerprint:
            session.commit()
            raise IdempotencyKeyReused(
                f"This {HEADER} was already used with a different request; use a new key for a new request.")
        if status == COMPLETED:
            session.commit()
            return StoredResponse(status_code=code, body=body)
        if abandoned and _take_over(session, record_id):
            session.commit()
            log.warning("idempotency_key_reclaimed", record_id=str(record_id))
            return Claim(record_id=record_id, user_id=user_id, key=key, fingerprint=fingerprint)
        session.commit()
        raise IdempotencyKeyInFlight(
            f"A request with this {HEADER} is still being processed; retry shortly.",
            headers={"Retry-After": "1"})
    raise IdempotencyKeyInFlight(f"A request with this {HEADER} is being processed; retry shortly.",
                                 headers={"Retry-After": "1"})


def complete(claimed: Claim, *, status_code: int, body: object) -> None:
    """Store the response. A failure here is logged, not raised: the operation itself succeeded."""
    try:
        db.session.rollback()  # whatever the view left open; its work is committed or void
        db.session.execute(_COMPLETE, {"record_id": claimed.record_id, "code": status_code, "body": body})
        db.session.commit()
    except Exception:
        db.session.rollback()
        log.exception("idempotency_response_not_stored", record_id=str(claimed.record_id))


def release(claimed: Claim) -> None:
    """Forget an in-flight claim whose operation failed, so the client may retry with the same key."""
    try:
        db.session.rollback()
        db.session.execute(_RELEASE, {"record_id": claimed.record_id})
        db.session.commit()
    except Exception:
        db.session.rollback()
        log.exception("idempotency_key_not_released", record_id=str(claimed.record_id))


def replay_response(stored: StoredResponse):
    response = current_app.response_class(
        json.dumps(stored.body) if stored.body is not None else b"",
        status=stored.status_code, mimetype="application/json" if stored.body is not None else None)
    response.headers[REPLAYED_HEADER] = "true"
    return response


def purge_expired(*, now: dt.datetime | None = None) -> int:
    """Delete expired keys (a periodic job's work); returns how many. The caller's transaction is committed."""
    cutoff = now if now is not None else func.now()
    deleted = db.session.execute(delete(_table).where(_table.c.expires_at <= cutoff)).rowcount
    db.session.commit()
    return deleted


def _take_over(session, record_id: uuid.UUID) -> bool:
    return session.execute(_TAKE_OVER, {"record_id": record_id}).scalar_one_or_none() is not None
