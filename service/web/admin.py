"""The operator's console: login/logout and the send log (at /admin/messages; /admin is the home page,
admin_home.py). Everything here needs a logged-in session.

The blueprint, its login guard and CSRF check are in console.py, shared with the subscriber, campaign and
outbox pages in their own modules.
"""
from __future__ import annotations

import csv
import io
import logging
import secrets
from urllib.parse import urlsplit

from flask import (
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from sqlalchemy import select

from service.compose import as_sent
from service.core.db import utcnow
from service.core.models import MAX_ID, Event, MessageContent, Subscriber
from service.core.tokens import BadToken, make_device_token, read_device_token
from service.operator.accounts import DEVICE_COOKIE_DAYS, authenticate, end_sessions
from service.operator.mailview import parse_email
from service.operator.send_log import CSV_COLUMNS, MessageFilter, export_pages, get_message, list_messages
from service.web import db, runtime
from service.web.console import bp, email_frame

log = logging.getLogger(__name__)


DEVICE_COOKIE = "drip_device"


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        s = db()
        device = _device()
        user = authenticate(s, request.form.get("email", ""), request.form.get("password", ""),
                            client=request.remote_addr or "?", now=utcnow(), device=device)
        s.commit()
        if user is not None:
            session.clear()
            session["user_id"] = user.id
            session["session_version"] = user.session_version or 0
            session.permanent = True
            resp = redirect(_safe_next(request.args.get("next")) or url_for("admin.index"))
            _remember_device(resp, user.id, device[1] if device and device[0] == user.id else None)
            return resp
        error = "Wrong email or password, or too many attempts: wait a few minutes and try again."
    return render_template("admin/login.html", error=error), 401 if error else 200


def _device() -> tuple[int, str] | None:
    """(user id, device id) from the signed cookie of a browser that logged in before, else None."""
    token = request.cookies.get(DEVICE_COOKIE)
    if not token:
        return None
    try:
        return read_device_token(current_app.secret_key, token, max_age_days=DEVICE_COOKIE_DAYS)
    except BadToken:
        return None


def _remember_device(resp, user_id: int, device: str | None) -> None:
    """After a good login: this browser's own login attempts are counted apart from strangers' (accounts.py)."""
    token = make_device_token(current_app.secret_key, user_id=user_id, device=device or secrets.token_urlsafe(16))
    resp.set_cookie(DEVICE_COOKIE, token, max_age=DEVICE_COOKIE_DAYS * 86400, path="/admin", httponly=True,
                    samesite="Lax", secure=current_app.config["SESSION_COOKIE_SECURE"])


def _safe_next(target: str | None) -> str | None:
    """Only a path inside /admin on this site: no scheme, no host, no `//` or backslash tricks."""
    if not target or "\\" in target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not (parts.path == "/admin" or parts.path.startswith("/admin/")):
        return None
    return target


@bp.post("/logout")
def logout():
    """Ends this operator's sessions on the server too, so a copy of the cookie is worthless afterwards."""
    end_sessions(g.user)
    db().commit()
    session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/messages")
def messages():
    flt = MessageFilter.from_args(request.args)
    page = list_messages(db(), flt)
    return render_template("admin/messages.html", page=page, flt=flt)


@bp.get("/messages/<int:message_id>")
def message(message_id: int):
    s = db()
    m = get_message(s, message_id)
    if m is None:
        abort(404)
    subscriber = s.get(Subscriber, m.subscriber_id)
    history = s.scalars(select(Event).where(Event.message_id == m.id).order_by(Event.created_at, Event.id)).all()
    view = _as_sent_view(s, m.id)
    return render_template("admin/message.html", m=m, subscriber=subscriber, history=history, view=view)


@bp.get("/messages/<int:message_id>/html")
def message_html(message_id: int):
    """The HTML part as sent, for the sandboxed frame on the message page."""
    view = _as_sent_view(db(), message_id) if 0 < message_id <= MAX_ID else None
    if view is None or view.html is None:
        abort(404)
    return email_frame(view.html)


def _as_sent_view(s, message_id: int):
    """The stored copy, parsed; None when there is none, or when it cannot be put together (a chunk is
    missing: logged, and the page shows no content rather than failing)."""
    content = s.get(MessageContent, message_id)
    if content is None:
        return None
    try:
        return parse_email(as_sent.read(s, content.raw))
    except (as_sent.MissingChunk, ValueError):
        log.exception("the as-sent copy of message %s cannot be read", message_id)
        return None


def _csv_line(values) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue()


@bp.get("/messages.csv")
def messages_csv():
    """The filtered send log as CSV (every matching row, not just one page), streamed a keyset page at a time
    (send_log.export_pages: one short transaction per page, ended before the bytes go out)."""
    flt = MessageFilter.from_args(request.args)
    sessions = runtime().sessions

    def rows():
        yield _csv_line(CSV_COLUMNS)
        for page in export_pages(sessions, flt):
            buf = io.StringIO()
            csv.writer(buf).writerows(page)
            yield buf.getvalue()

    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    return Response(stream_with_context(rows()), content_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="drip-send-log-{stamp}.csv"'})

