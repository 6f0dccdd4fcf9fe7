"""Operator sessions: a signed cookie naming a server-side session of the auth domain.

The cookie (Flask's signed session: HttpOnly, SameSite=Strict, Secure in production, path
/console) holds the operator's id, the session's id, when they signed in and when they were last
seen. A request gets in only while
- the session is younger than CONSOLE_SESSION_MAX_HOURS (absolute) and was used within the last
  CONSOLE_SESSION_IDLE_MINUTES (idle),
- its server-side record (`auth.service.open_console_session`) is neither signed out nor past its
  end, so a copied cookie stops working at sign-out,
and the views then require the user to be an ADMIN, checked against the database on every request
(a demoted admin is out at once).
"""
from __future__ import annotations

import datetime as dt
import time
import uuid

from flask import current_app, session

from wallet_api.auth import service as auth
from wallet_api.auth.models import User

USER, SESSION, STARTED, SEEN = "operator", "session", "started", "seen"
ANONYMOUS, EXPIRED, ENDED = "anonymous", "expired", "ended"


def _limits() -> tuple[int, int]:
    settings = current_app.config["SETTINGS"]
    return settings.console_session_idle_minutes * 60, settings.console_session_max_hours * 3600


def sign_in(user: User) -> None:
    """Start a session for `user`: a fresh cookie (nothing of the anonymous one is kept)."""
    _, absolute = _limits()
    session.clear()
    session_id = auth.open_console_session(user_id=user.id, lifetime=dt.timedelta(seconds=absolute))
    now = int(time.time())
    session.update({USER: str(user.id), SESSION: str(session_id), STARTED: now, SEEN: now})
    session.permanent = True  # the browser drops the cookie at the absolute end, too


def current_operator() -> tuple[User | None, str | None]:
    """The signed-in user (any role) and None, or None and why not: ANONYMOUS, EXPIRED or ENDED."""
    try:
        user_id, session_id = uuid.UUID(session[USER]), uuid.UUID(session[SESSION])
        started, seen = int(session[STARTED]), int(session[SEEN])
    except (KeyError, ValueError, TypeError):
        return None, ANONYMOUS
    idle, absolute = _limits()
    now = time.time()
    if now - seen > idle or now - started > absolute:
        auth.close_console_session(session_id=session_id)
        session.clear()
        return None, EXPIRED
    user = auth.console_session_user(user_id=user_id, session_id=session_id)
    if user is None:
        session.clear()
        return None, ENDED
    session[SEEN] = int(now)
    return user, None


def sign_out() -> None:
    """End the current session, server-side and in the browser."""
    try:
        session_id = uuid.UUID(session[SESSION])
    except (KeyError, ValueError, TypeError):
        session_id = None
    if session_id is not None:
        auth.close_console_session(session_id=session_id)
    session.clear()
