"""Admin pages for readers: search, the subscriber page (profile, consents, enrollments, timeline) and the
operator's actions on them. Every action is a POST with the CSRF token and writes an event."""
from __future__ import annotations

import json

from flask import Response, abort, flash, g, redirect, render_template, request, url_for

from service.audience.privacy import erase_subscriber, export_subscriber
from service.core.db import utcnow
from service.core.models import SUBSCRIBER_STATUSES
from service.operator import subscribers as people
from service.operator.campaign_stats import paused_campaigns
from service.operator.send_log import MAX_LIMIT, get_message
from service.web import db, runtime
from service.web.console import bp


def _subscriber(subscriber_id: int):
    found = people.get_subscriber(db(), subscriber_id)
    if found is None:
        abort(404)
    return found


def _text(name: str, size: int = 320) -> str | None:
    return (request.args.get(name) or "").replace("\x00", "").strip()[:size] or None


@bp.get("/subscribers")
def subscribers():
    before = request.args.get("before", "")
    flt = people.SubscriberFilter(
        q=_text("q"), status=_text("status") if _text("status") in SUBSCRIBER_STATUSES else None,
        campaign=_text("campaign", 64), before=int(before) if before.isdigit() and len(before) < 19 else None,
        limit=min(MAX_LIMIT, 50))
    page = people.list_subscribers(db(), flt)
    return render_template("admin/subscribers.html", page=page, flt=flt, statuses=SUBSCRIBER_STATUSES,
                           campaigns=sorted(runtime().campaigns))


@bp.get("/subscribers/<int:subscriber_id>")
def subscriber(subscriber_id: int):
    s = db()
    person = _subscriber(subscriber_id)
    return render_template(
        "admin/subscriber.html", person=person, consents=people.consents(s, person),
        enrollments=people.enrollment_views(s, person, runtime().campaigns, paused_campaigns(s)),
        timeline=people.timeline(s, person), messages=people.messages_of(s, person))


@bp.get("/subscribers/<int:subscriber_id>/export.json")
def subscriber_export(subscriber_id: int):
    data = export_subscriber(db(), _subscriber(subscriber_id), now=utcnow(), by="an operator", operator=g.user.email)
    db().commit()
    return Response(json.dumps(data, indent=2), content_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="subscriber-{subscriber_id}.json"'})


def _act(subscriber_id: int, action) -> Response:
    """Run one action, commit, and come back to the subscriber page with what happened."""
    s = db()
    person = _subscriber(subscriber_id)
    try:
        note = action(s, person)
    except people.ActionError as exc:
        s.rollback()
        flash(exc.message, "error")
    else:
        s.commit()
        flash(note, "ok")
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), code=303)


@bp.post("/subscribers/<int:subscriber_id>/unsubscribe")
def subscriber_unsubscribe(subscriber_id: int):
    def run(s, person):
        n = people.unsubscribe(s, person, now=utcnow(), by=g.user.email)
        return f"Unsubscribed; {n} unsent message(s) cancelled."
    return _act(subscriber_id, run)


@bp.post("/subscribers/<int:subscriber_id>/resubscribe")
def subscriber_resubscribe(subscriber_id: int):
    def run(s, person):
        n = people.resubscribe(s, person, reason=request.form.get("reason", ""), now=utcnow(), by=g.user.email)
        return f"Resubscribed; {n} enrollment(s) continue."
    return _act(subscriber_id, run)


@bp.post("/subscribers/<int:subscriber_id>/erase")
def subscriber_erase(subscriber_id: int):
    s = db()
    person = _subscriber(subscriber_id)
    if request.form.get("confirm") != "yes":
        flash("Tick the box to confirm the erasure.", "error")
        return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id), code=303)
    erase_subscriber(s, person, utcnow(), by=g.user.email)
    s.commit()
    flash("The subscriber was erased; only a hash of the address remains, on the suppression list.", "ok")
    return redirect(url_for("admin.subscribers"), code=303)


@bp.post("/messages/<int:message_id>/retry")
def message_retry(message_id: int):
    s = db()
    m = get_message(s, message_id)
    if m is None:
        abort(404)
    try:
        people.retry_message(s, m, now=utcnow(), by=g.user.email)
    except people.ActionError as exc:
        s.rollback()
        flash(exc.message, "error")
    else:
        s.commit()
        from service.web.public import runtime_wake

        runtime_wake()
        flash("Queued again; it goes out on the next pass.", "ok")
    return redirect(url_for("admin.message", message_id=message_id), code=303)
