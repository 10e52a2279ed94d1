"""The operator's console: login/logout and the send log. Everything here needs a logged-in session."""
from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, abort, g, redirect, render_template, request, session, url_for
from sqlalchemy import select

from ..accounts import authenticate
from ..db import utcnow
from ..models import Event, Message, Subscriber, User
from ..reporting import MessageFilter, list_messages
from . import db

bp = Blueprint("admin", __name__, url_prefix="/admin")


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


@bp.app_context_processor
def _inject() -> dict:
    return {"csrf_token": csrf_token}


@bp.before_request
def _guard():  # noqa: ANN202
    if request.method == "POST":
        sent = request.form.get("csrf", "")
        if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
            abort(400, description="The form expired or did not come from this site; reload the page and try again.")
    if request.endpoint in ("admin.login",):
        return None
    user_id = session.get("user_id")
    user = db().get(User, user_id) if user_id else None
    if user is None:
        return redirect(url_for("admin.login", next=request.full_path if request.method == "GET" else None))
    g.user = user
    return None


@bp.route("/login", methods=["GET", "POST"])
def login():  # noqa: ANN201
    error = None
    if request.method == "POST":
        s = db()
        user = authenticate(s, request.form.get("email", ""), request.form.get("password", ""),
                            client=request.remote_addr or "?", now=utcnow())
        s.commit()
        if user is not None:
            session.clear()
            session["user_id"] = user.id
            session.permanent = True
            return redirect(_safe_next(request.args.get("next")) or url_for("admin.messages"))
        error = "Wrong email or password, or too many attempts: wait a few minutes and try again."
    return render_template("admin/login.html", error=error), 401 if error else 200


def _safe_next(target: str | None) -> str | None:
    """Only a path inside /admin on this site: no scheme, no host, no `//` or backslash tricks."""
    if not target or "\\" in target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not (parts.path == "/admin" or parts.path.startswith("/admin/")):
        return None
    return target


@bp.post("/logout")
def logout():  # noqa: ANN201
    session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/")
def index():  # noqa: ANN201
    return redirect(url_for("admin.messages"))


@bp.get("/messages")
def messages():  # noqa: ANN201
    flt = MessageFilter.from_args(request.args)
    page = list_messages(db(), flt)
    return render_template("admin/messages.html", page=page, flt=flt)


@bp.get("/messages/<int:message_id>")
def message(message_id: int):  # noqa: ANN201
    s = db()
    m = s.get(Message, message_id)
    if m is None:
        abort(404)
    subscriber = s.get(Subscriber, m.subscriber_id)
    history = s.scalars(select(Event).where(Event.message_id == m.id).order_by(Event.created_at, Event.id)).all()
    return render_template("admin/message.html", m=m, subscriber=subscriber, history=history)
