"""Users, logins and refresh-token rotation.

A login starts a token *family*. Each refresh consumes the presented token (an atomic
UPDATE ... WHERE used_at IS NULL) and issues the next one in the same family. Presenting a token
that was already consumed means two parties hold it (one of them stole it), so the whole family
is revoked and both must log in again. Logout revokes the family of the presented token.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from wallet_api.auth import passwords
from wallet_api.auth.models import RefreshToken, Role, User
from wallet_api.auth.tokens import issue_access_token
from wallet_api.db_types import utcnow
from wallet_api.errors import Conflict, Unauthorized
from wallet_api.extensions import db
from wallet_api.logging import bind_user

INVALID_CREDENTIALS = "Invalid email or password."


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"


def register_user(*, email: str, password: str, role: Role = Role.USER) -> User:
    """Create a user; 409 when the (normalised) email is taken."""
    user = User(email=email, password_hash=passwords.hash_password(password), role=role.value)
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict("An account with this email already exists.", error="email_taken") from None
    bind_user(user.id)
    return user


def login(*, email: str, password: str) -> TokenPair:
    """Check credentials (one generic message for every failure) and start a token family."""
    user = db.session.scalar(select(User).where(User.email == email.strip().lower()))
    if not passwords.verify_password(user.password_hash if user else None, password):
        raise Unauthorized(INVALID_CREDENTIALS, error="invalid_credentials")
    bind_user(user.id)
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    pair = _issue_pair(user=user, family_id=uuid.uuid4())
    db.session.commit()
    return pair


def refresh(*, refresh_token: str) -> TokenPair:
    """Rotate: consume the presented token, issue the next of its family; reuse revokes the family."""
    token_hash = _hash_token(refresh_token)
    now = utcnow()
    consumed = db.session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == token_hash, RefreshToken.used_at.is_(None),
               RefreshToken.revoked_at.is_(None), RefreshToken.expires_at > now)
        .values(used_at=now)
        .returning(RefreshToken.user_id, RefreshToken.family_id)
    ).first()
    if consumed is None:
        known = db.session.scalar(select(RefreshToken).where(RefreshToken.token_hash == token_hash))
        if known is not None and known.used_at is not None and known.revoked_at is None:
            _revoke_family(known.family_id, now)
            db.session.commit()
            current_app.logger.warning("refresh_token_reuse_detected family=%s", known.family_id)
            raise Unauthorized("Refresh token reuse detected; the session was revoked.",
                               error="refresh_token_reused")
        db.session.rollback()
        raise Unauthorized("Invalid or expired refresh token.", error="invalid_refresh_token")
    user = db.session.get(User, consumed.user_id)
    bind_user(user.id)
    pair = _issue_pair(user=user, family_id=consumed.family_id)
    db.session.commit()
    return pair


def logout(*, refresh_token: str) -> None:
    """Revoke the presented token's family; a token that could not refresh (unknown, revoked or
    expired) is a 401, so a client learns its session was already gone."""
    known = db.session.scalar(select(RefreshToken).where(RefreshToken.token_hash == _hash_token(refresh_token)))
    if known is None or known.revoked_at is not None or known.expires_at <= utcnow():
        raise Unauthorized("Invalid refresh token.", error="invalid_refresh_token")
    _revoke_family(known.family_id, utcnow())
    db.session.commit()


def get_user(*, user_id: uuid.UUID) -> User | None:
    return db.session.get(User, user_id)


def create_admin(*, email: str, password: str) -> tuple[User, bool]:
    """Create an ADMIN, or promote an existing user; returns (user, created)."""
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None:
        return register_user(email=email, password=password, role=Role.ADMIN), True
    user.role = Role.ADMIN.value
    user.password_hash = passwords.hash_password(password)
    db.session.commit()
    return user, False


def _issue_pair(*, user: User, family_id: uuid.UUID) -> TokenPair:
    settings = current_app.config["SETTINGS"]
    raw = secrets.token_urlsafe(32)
    db.session.add(RefreshToken(
        user_id=user.id, family_id=family_id, token_hash=_hash_token(raw),
        expires_at=utcnow() + dt.timedelta(seconds=settings.refresh_token_ttl_seconds)))
    return TokenPair(access_token=issue_access_token(user_id=user.id, role=user.role),
                     refresh_token=raw, expires_in=settings.access_token_ttl_seconds)


def _revoke_family(family_id: uuid.UUID, now: dt.datetime) -> None:
    db.session.execute(update(RefreshToken)
                       .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
                       .values(revoked_at=now))


def _hash_token(raw: str) -> str:
    key = current_app.config["SETTINGS"].jwt_refresh_secret.encode()
    return hmac.new(key, raw.encode(), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- the operator console
#
# A console sign-in is a login whose token family never leaves the server: one refresh-token row
# whose raw token is thrown away at once (so nothing can ever refresh it), the family id named by
# the console's signed session cookie. Its `expires_at` is the session's absolute end and its
# `revoked_at` the sign-out, so a copied cookie dies with the session it belongs to.


def authenticate(*, email: str, password: str) -> User | None:
    """The user these credentials belong to, or None (an unknown email costs what a wrong password does).

    Rehashes a password hashed with older parameters in the caller's transaction (the caller commits).
    """
    user = find_user_by_email(email=email)
    if not passwords.verify_password(user.password_hash if user else None, password):
        return None
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    return user


def open_console_session(*, user_id: uuid.UUID, lifetime: dt.timedelta) -> uuid.UUID:
    """Start a console session of `user_id` ending after `lifetime` at the latest; returns its id."""
    session_id = uuid.uuid4()
    db.session.add(RefreshToken(user_id=user_id, family_id=session_id,
                                token_hash=_hash_token(secrets.token_urlsafe(32)),
                                expires_at=utcnow() + lifetime))
    db.session.commit()
    return session_id


def console_session_user(*, user_id: uuid.UUID, session_id: uuid.UUID) -> User | None:
    """The user of a console session that is neither signed out nor past its end, else None."""
    return db.session.scalar(
        select(User).join(RefreshToken, RefreshToken.user_id == User.id)
        .where(User.id == user_id, RefreshToken.family_id == session_id, RefreshToken.revoked_at.is_(None),
               RefreshToken.used_at.is_(None), RefreshToken.expires_at > utcnow()))


def close_console_session(*, session_id: uuid.UUID) -> None:
    """Sign a console session out (idempotent: an ended session stays ended)."""
    _revoke_family(session_id, utcnow())
    db.session.commit()


def find_user_by_email(*, email: str) -> User | None:
    """The user with this email (compared normalised, as stored), or None."""
    return db.session.scalar(select(User).where(User.email == email.strip().lower()))


def emails_by_id(*, user_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Email addresses of the given users (ids without a user are left out)."""
    if not user_ids:
        return {}
    return dict(db.session.execute(select(User.id, User.email).where(User.id.in_(user_ids))).all())
