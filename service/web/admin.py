"""The operator's console: login/logout and the send log. Everything here needs a logged-in session.

Subscribers, campaigns and the outbox viewer add their routes to this blueprint from their own modules
(imported at the bottom), so they share the login guard and the CSRF check.
"""
from __future__ import annotations

import csv
import hmac
import io
import logging
import secrets
from dataclasses import replace
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    g,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from sqlalchemy import select

from .. import as_sent
from ..accounts import authenticate
from ..db import utcnow
from ..mailview import parse_email
from ..models import MAX_ID, Event, MessageContent, Subscriber, User
from ..reporting import CSV_COLUMNS, MAX_LIMIT, MessageFilter, csv_row, get_message, list_messages
from . import db, runtime

log = logging.getLogger(__name__)
bp = Blueprint("admin", __name__, url_prefix="/admin")


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


@bp.app_context_processor
def _inject() -> dict:
    return {"csrf_token": csrf_token, "outbox_enabled": outbox_dir() is not None,
            "sending_paused": sending_paused}


def sending_paused() -> str | None:
    """Why sending is paused (a provider or the relay refused our credentials), for the console's banner."""
    from ..sending import paused_reason

    return paused_reason(db())


def outbox_dir():  # noqa: ANN201
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
    m = get_message(s, message_id)
    if m is None:
        abort(404)
    subscriber = s.get(Subscriber, m.subscriber_id)
    history = s.scalars(select(Event).where(Event.message_id == m.id).order_by(Event.created_at, Event.id)).all()
    view = _as_sent_view(s, m.id)
    return render_template("admin/message.html", m=m, subscriber=subscriber, history=history, view=view)


@bp.get("/messages/<int:message_id>/html")
def message_html(message_id: int):  # noqa: ANN201
    """The HTML part as sent, for the sandboxed frame on the message page."""
    view = _as_sent_view(db(), message_id) if 0 < message_id <= MAX_ID else None
    if view is None or view.html is None:
        abort(404)
    return email_frame(view.html)


def _as_sent_view(s, message_id: int):  # noqa: ANN001, ANN202
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


def _csv_line(values) -> str:  # noqa: ANN001
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue()


@bp.get("/messages.csv")
def messages_csv():  # noqa: ANN201
    """The filtered send log as CSV (every matching row, not just one page), streamed."""
    flt = MessageFilter.from_args(request.args)
    s = db()

    def rows():  # noqa: ANN202
        # One short transaction per page, ended before the bytes go out: on SQLite every transaction holds
        # the write lock, and a slow download must not stall the dispatcher.
        yield _csv_line(CSV_COLUMNS)
        before = flt.before
        while True:
            page = list_messages(s, replace(flt, before=before, limit=MAX_LIMIT))
            chunk = "".join(_csv_line(csv_row(m)) for m in page.rows)
            s.rollback()
            yield chunk
            if page.next_before is None:
                return
            before = page.next_before

    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    return Response(stream_with_context(rows()), content_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="drip-send-log-{stamp}.csv"'})


from . import admin_campaigns, admin_outbox, admin_subscribers  # noqa: E402, F401  (routes on this blueprint)
