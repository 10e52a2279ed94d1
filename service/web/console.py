"""The operator's console blueprint (`/admin`) and what its pages share: the login guard and CSRF check that
run before every console request, the CSRF token, the sending-paused banner, and the sandboxed frame that
shows an email's HTML. The pages themselves live in admin.py (login and the send log), admin_subscribers.py,
admin_campaigns.py and admin_outbox.py; app.py imports each so its routes join this blueprint.
"""
from __future__ import annotations

import hmac
import secrets
from datetime import datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, abort, g, redirect, request, session, url_for

from service.core.models import User
from service.web import db, runtime

bp = Blueprint("admin", __name__, url_prefix="/admin")


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


@bp.app_context_processor
def _inject() -> dict:
    return {"csrf_token": csrf_token, "outbox_enabled": outbox_dir() is not None,
            "sending_paused": sending_paused, "step_subject": step_subject, "operator_zone": operator_zone}


def operator_zone() -> str:
    """The time zone this operator reads the console in (their setting on the account page), else UTC."""
    user = g.get("user")
    return (user.timezone if user is not None else None) or "UTC"


@bp.app_template_filter("when")
def when(value: datetime | None, seconds: bool = True) -> str:
    """A moment in the operator's zone, to the whole second, with the zone's abbreviation: "2026-03-10 13:00:05
    CET". Every console time goes through it, so no page shows UTC microseconds or another zone."""
    if value is None:
        return ""
    local = value.astimezone(ZoneInfo(operator_zone()))
    return local.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def step_subject(campaign: str, step_key: str) -> str:
    """A step's subject line from the campaign as loaded now ("" when the step is gone), shown beside its key."""
    c = runtime().campaigns.get(campaign)
    step = c.step_by_key(step_key) if c is not None else None
    return step.subject if step is not None else ""


def sending_paused() -> str | None:
    """Why sending is paused (a provider or the relay refused our credentials), for the console's banner."""
    from service.dispatch.sending_pause import paused_reason

    return paused_reason(db())


def outbox_dir():
    """The file transport's folder, or None when emails go elsewhere."""
    from pathlib import Path
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(runtime().settings.email_url)
    if parts.scheme != "file":
        return None
    return Path(unquote(parts.netloc + parts.path) or "outbox").resolve()


# Email HTML is shown in a sandboxed frame from its own response: no script, no form, no plugin, and
# no access to the admin origin (sandbox without allow-same-origin), whatever the email contains.
EMAIL_FRAME_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: https:; "
                   "font-src data:; frame-ancestors 'self'; base-uri 'none'; form-action 'none'")


def email_frame(html: str) -> Response:
    resp = Response(html, content_type="text/html; charset=utf-8")
    resp.headers["Content-Security-Policy"] = EMAIL_FRAME_CSP
    resp.headers["X-Frame-Options"] = "SAMEORIGIN"
    return resp


@bp.before_request
def guard():
    if request.method == "POST":
        sent = request.form.get("csrf", "")
        if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
            abort(400, description="The form expired or did not come from this site; reload the page and try again.")
    if request.endpoint in ("admin.login",):
        return None
    user_id = session.get("user_id")
    user = db().get(User, user_id) if user_id else None
    if user is not None and session.get("session_version") != (user.session_version or 0):
        user = None  # logged out or password changed since this session began: the cookie is spent
        session.clear()
    if user is not None and user.disabled_at is not None:  # disabled by another operator: out at once
        session.clear()
        user = None
    if user is None:
        return redirect(url_for("admin.login", next=request.full_path if request.method == "GET" else None))
    g.user = user
    return None
