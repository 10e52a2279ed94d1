"""The console's settings pages: your own account (the time zone you read times in), operators (list, add,
disable), API tokens (create, shown once; list; revoke) and sending (why it is paused; resume).

Each is a thin view over operator/accounts.py and dispatch/sending_pause.py, the functions the CLI uses.
"""
from __future__ import annotations

from functools import cache
from zoneinfo import available_timezones

from flask import flash, g, redirect, render_template, request, url_for
from sqlalchemy import select

from service.core.db import utcnow
from service.core.models import Event, SendingState
from service.dispatch import sending_pause
from service.operator.accounts import (
    AccountError,
    add_user,
    create_token,
    list_tokens,
    list_users,
    revoke_token,
    set_disabled,
    set_timezone,
)
from service.web import db
from service.web.console import bp


@cache
def zones() -> list[str]:
    return sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/")))


@bp.route("/account", methods=["GET", "POST"])
def account():
    s = db()
    if request.method == "POST":
        try:
            set_timezone(s, g.user, request.form.get("timezone"))
        except AccountError as exc:
            s.rollback()
            flash(f"Time zone: {exc}", "error")
            return render_template("admin/account.html", zones=zones()), 400
        s.commit()
        flash(f"Times are now shown in {g.user.timezone or 'UTC'}.", "notice")
        return redirect(url_for("admin.account"))
    return render_template("admin/account.html", zones=zones())


@bp.get("/operators")
def operators():
    return render_template("admin/operators.html", users=list_users(db()))


@bp.post("/operators")
def operator_add():
    s = db()
    email = request.form.get("email", "")
    reset = request.form.get("reset") == "yes"
    try:
        user = add_user(s, email, request.form.get("password", ""), now=utcnow(), reset_password=reset)
    except AccountError as exc:
        s.rollback()
        flash(f"Not added: {exc}.", "error")
        return render_template("admin/operators.html", users=list_users(s), email=email), 400
    s.commit()
    flash(f"{user.email} has a new password and can log in." if reset else f"{user.email} can now log in.", "notice")
    return redirect(url_for("admin.operators"))


@bp.post("/operators/<int:user_id>/disable", defaults={"action": "disable"})
@bp.post("/operators/<int:user_id>/enable", defaults={"action": "enable"}, endpoint="operator_enable")
def operator_disable(user_id: int, action: str):
    s = db()
    try:
        user = set_disabled(s, user_id, action == "disable", by=g.user, now=utcnow())
    except AccountError as exc:
        s.rollback()
        flash(f"{exc}.", "error")
        return redirect(url_for("admin.operators"))
    s.commit()
    flash(f"{user.email} is {'disabled: their sessions end now' if action == 'disable' else 'enabled again'}.",
          "notice")
    return redirect(url_for("admin.operators"))


@bp.get("/tokens")
def tokens():
    return render_template("admin/tokens.html", tokens=list_tokens(db()), created=None)


@bp.post("/tokens")
def token_create():
    s = db()
    name = request.form.get("name", "")
    # Read-only unless the operator ticks the box: a leaked read token cannot change anyone.
    scopes = ("read", "write") if request.form.get("write") == "yes" else ("read",)
    try:
        secret = create_token(s, name, now=utcnow(), scopes=scopes)
    except AccountError as exc:
        s.rollback()
        flash(f"No token created: {exc}.", "error")
        return render_template("admin/tokens.html", tokens=list_tokens(s), created=None), 400
    s.commit()
    # Shown in this response only (the console sends Cache-Control: no-store); only its hash is kept.
    return render_template("admin/tokens.html", tokens=list_tokens(s), created=secret, created_name=name.strip())


@bp.post("/tokens/<int:token_id>/revoke")
def token_revoke(token_id: int):
    s = db()
    revoked = revoke_token(s, str(token_id), now=utcnow())
    s.commit()
    if revoked:
        flash(f"Token {revoked[0].name} is revoked: scripts using it are refused from now on.", "notice")
    else:
        flash("That token was already revoked.", "error")
    return redirect(url_for("admin.tokens"))


@bp.get("/sending")
def sending():
    s = db()
    state = s.get(SendingState, sending_pause.ROW)
    history = s.scalars(select(Event).where(Event.type.in_(("sending_paused", "sending_resumed")))
                        .order_by(Event.created_at.desc(), Event.id.desc()).limit(10))
    return render_template("admin/sending.html", state=state, reason=sending_pause.paused_reason(s),
                           history=list(history))


@bp.post("/sending/resume")
def sending_resume():
    s = db()
    if sending_pause.resume(s, now=utcnow()):
        s.commit()
        flash("Sending resumed: the next pass sends what is due. If the credentials are still wrong, it pauses "
              "again at the first refusal.", "notice")
    else:
        flash("Sending was not paused.", "notice")
    return redirect(url_for("admin.sending"))
