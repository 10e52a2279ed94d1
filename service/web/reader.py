"""The reader's pages: the preference page and the view-in-browser copy of an email.

No login: the signed token in the URL is the secret, exactly as for unsubscribe. Forms carry no CSRF
token; instead every POST is refused unless its Origin (or, without one, its Referer) is this site: a
browser always sends Origin on a cross-site form post, so another site cannot drive a reader's page.
Pages are sent with `Referrer-Policy: same-origin` so following a link off-site never leaks the token.
"""
from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from flask import Blueprint, Response, abort, redirect, render_template, request, url_for
from sqlalchemy import select

from service.audience import preferences as prefs
from service.compose.composer import ComposeJob, compose_confirmation
from service.core.db import utcnow
from service.core.models import Enrollment, Message, Subscriber
from service.core.tokens import BadToken, make_data_token, read_data_token, read_preferences_token, read_view_token
from service.transports import make_transport
from service.web import db, runtime

log = logging.getLogger(__name__)
bp = Blueprint("reader", __name__)

DONE = {
    "left": "You have left that campaign. Your other emails continue.",
    "left_all": "You are unsubscribed from everything. Sorry to see you go.",
    "profile": "Your details are saved.",
    "snoozed": "Your emails are paused.",
    "resumed": "Your emails are back on.",
    "digest": "Done: you will get the monthly digest instead.",
    # export and erasure start in the reader's own inbox: a forwarded email's link cannot reach them
    "data_export": "We've emailed a link to {address}. Open it within an hour to download your data.",
    "data_erase": "We've emailed a link to {address}. Open it within an hour to erase your data.",
}
VIEW_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'none'")


@bp.after_request
def _private(response: Response) -> Response:
    # Not "no-referrer": with it Chromium sends `Origin: null` on our own form posts. "same-origin" sends
    # nothing to other sites, so the token in the URL never leaks through a link to a resource.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Robots-Tag"] = "noindex"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def cross_site() -> bool:
    """True when a POST comes from another site (Origin, else Referer, differs from ours). Requests with
    neither header are not from a browser form on another site, so they pass."""
    claimed = request.headers.get("Origin") or (_origin(request.referrer) if request.referrer else None)
    if claimed is None:
        return False
    return claimed.lower() not in {_origin(runtime().settings.base_url), _origin(request.host_url)}


def _subscriber(token: str, *, lock: bool = False) -> Subscriber:
    rt = runtime()
    try:
        public_id = read_preferences_token(rt.settings.secret_key, token,
                                           max_age_days=rt.settings.unsubscribe_max_age_days)
    except BadToken:
        abort(404)
    subscriber = prefs.find(db(), public_id, lock=lock)
    if subscriber is None:
        abort(404)
    return subscriber


@bp.errorhandler(404)
def _not_found(_exc):
    return render_template("reader_invalid.html"), 404


def _page(token: str, subscriber: Subscriber, *, error: prefs.PreferenceError | None = None, status: int = 200):
    rt = runtime()
    done = DONE.get(request.args.get("done", ""), "").format(address=prefs.masked_address(subscriber.email)) or None
    now = utcnow()
    snoozed = subscriber.snoozed_until if subscriber.snoozed_until and subscriber.snoozed_until > now else None
    return render_template(
        "preferences.html", token=token, subscriber=subscriber, address=prefs.masked_address(subscriber.email),
        rows=prefs.campaign_rows(db(), subscriber, rt.campaigns),
        snoozed_until=snoozed, zones=sorted(available_timezones()), weeks=prefs.SNOOZE_WEEKS, done=done, error=error,
    ), status


@bp.get("/preferences/<token>")
def preferences_page(token: str):
    return _page(token, _subscriber(token))


@bp.post("/preferences/<token>/<action>")
def preferences_post(token: str, action: str):
    if cross_site():
        return render_template("reader_invalid.html", cross_site=True), 403
    session = db()
    subscriber = _subscriber(token, lock=True)
    if action in ("export", "erase"):
        return _request_data_link(token, subscriber, action)
    if subscriber.status != "active":
        return _page(token, subscriber, status=409)
    try:
        done = _apply(session, subscriber, action)
    except prefs.PreferenceError as exc:
        session.rollback()
        return _page(token, _subscriber(token), error=exc, status=400)
    session.commit()
    return redirect(url_for("reader.preferences_page", token=token, done=done, _anchor="status"), code=303)


def _apply(session, subscriber: Subscriber, action: str) -> str:
    """One form's change; returns the key of the message shown after the redirect."""
    form, rt, now = request.form, runtime(), utcnow()
    if action == "leave":
        prefs.leave_campaign(session, subscriber, form.get("campaign", ""), now=now)
        return "left"
    if action == "leave-all":
        prefs.leave_everything(session, subscriber, now=now)
        return "left_all"
    if action == "profile":
        prefs.update_profile(session, subscriber, name=form.get("name", ""), timezone=form.get("timezone", ""),
                             campaigns=rt.campaigns, now=now)
        return "profile"
    if action == "snooze":
        if form.get("weeks") == "0":
            prefs.end_snooze(session, subscriber, now=now)
            return "resumed"
        weeks = form.get("weeks", "")
        prefs.snooze(session, subscriber, int(weeks) if weeks.isdigit() else -1, now=now)
        return "snoozed"
    if action == "digest":
        prefs.switch_to_digest(session, subscriber, form.get("campaign", ""), campaigns=rt.campaigns, now=now)
        return "digest"
    abort(404)


def _request_data_link(token: str, subscriber: Subscriber, action: str):
    """Download and erasure begin with an email to the reader's own address: whoever holds a forwarded
    preference link sees neither. Recorded, then sent, then (only if sending failed) the record removed."""
    session, now = db(), utcnow()
    if prefs.data_link_due(session, subscriber, action, now=now):
        event = prefs.note_data_link(session, subscriber, action, now=now)
        session.commit()  # no transaction (or row lock) held across the send
        if not _email_data_link(subscriber, action, now):
            session.delete(event)
            session.commit()
            error = prefs.PreferenceError("not_sent", "We could not send the email just now. Please try again in "
                                          "a few minutes.", None)
            return _page(token, _subscriber(token), error=error, status=503)
    else:  # a link went out a moment ago: the same answer, and no second email
        session.rollback()
    return redirect(url_for("reader.preferences_page", token=token, done=f"data_{action}", _anchor="status"),
                    code=303)


def _email_data_link(subscriber: Subscriber, action: str, now) -> bool:
    """Sends the data link at once, through the configured transport (the reader is waiting for it)."""
    rt = runtime()
    first = db().scalar(select(Enrollment.campaign).where(Enrollment.subscriber_id == subscriber.id)
                        .order_by(Enrollment.id))
    campaign = rt.campaigns.get(first or "") or rt.campaigns[rt.settings.default_campaign]
    token = make_data_token(rt.settings.secret_key, public_id=subscriber.public_id, action=action)
    outbound = compose_confirmation(
        rt.composer, campaign=campaign, to_email=subscriber.email, name=subscriber.name,
        confirm_url=f"{rt.settings.base_url}/data/{token}",
        unsubscribe_url=rt.unsubscribe_url(subscriber.public_id, campaign.key),
        now=now, pending_id=0, expiry_days=1, kind=f"data_{action}")
    transport = make_transport(rt.settings.email_url)
    try:
        results = list(transport.send(iter([outbound])))
    except Exception:  # the relay is down: the reader is told to try again
        log.exception("sending a data link failed")
        return False
    finally:
        transport.close()
    if not (results and results[0].ok):
        log.warning("data link not sent: %s", results[0].error if results else "no result")
        return False
    return True


@bp.get("/preferences/<token>/erase")
def erase_confirm(token: str):
    """Explains erasure and offers to email the link; nothing is erased from here."""
    subscriber = _subscriber(token)
    return render_template("erase.html", token=token, mode="request", address=prefs.masked_address(subscriber.email))


def _data_claim(token: str) -> tuple[Subscriber, str]:
    rt = runtime()
    try:
        public_id, action = read_data_token(rt.settings.secret_key, token,
                                            max_age_seconds=int(prefs.DATA_LINK_MAX_AGE.total_seconds()))
    except BadToken:
        abort(404)
    subscriber = prefs.find(db(), public_id)
    if subscriber is None:
        abort(404)
    return subscriber, action


@bp.get("/data/<token>")
def data_page(token: str):
    """Opened from the reader's own inbox: asks once more (a mail scanner's GET changes nothing)."""
    subscriber, action = _data_claim(token)
    return render_template("erase.html", token=token, mode=f"{action}-ask",
                           address=prefs.masked_address(subscriber.email))


@bp.post("/data/<token>")
def data_post(token: str):
    if cross_site():
        return render_template("reader_invalid.html", cross_site=True), 403
    subscriber, action = _data_claim(token)
    session = db()
    if action == "export":
        data = prefs.export_reader_data(session, subscriber, now=utcnow())
        session.commit()
        return Response(json.dumps(data, indent=2, ensure_ascii=False), mimetype="application/json",
                        headers={"Content-Disposition": 'attachment; filename="my-data.json"'})
    if request.form.get("confirm") != "erase":
        return render_template("erase.html", token=token, mode="erase-ask", error=True,
                               address=prefs.masked_address(subscriber.email)), 400
    prefs.erase_reader(session, subscriber, now=utcnow())
    session.commit()
    return render_template("erase.html", token=token, mode="erased")


# -- view in browser -----------------------------------------------------------------------------------
def stored_html(message: Message) -> str | None:
    """The message's stored rendering, preferred when present (Message has no such column yet; until one is
    added, the copy is re-rendered)."""
    value = getattr(message, "html", None)
    return value if isinstance(value, str) and value else None


@bp.get("/view/<token>")
def view_in_browser(token: str):
    """The email as sent to this reader, re-rendered from the same template with the message's values."""
    rt = runtime()
    try:
        pk = read_view_token(rt.settings.secret_key, token, max_age_days=rt.settings.unsubscribe_max_age_days)
    except BadToken:
        abort(404)
    row = db().execute(select(Message, Subscriber).join(Subscriber, Subscriber.id == Message.subscriber_id)
                       .where(Message.id == pk, Message.sent_at.is_not(None))).first()
    if row is None:
        abort(404)
    message, subscriber = row
    html = stored_html(message)
    if html is None:
        campaign = rt.campaigns.get(message.campaign)
        step = next((s for s in campaign.steps if s.key == message.step_key), None) if campaign else None
        if step is None:
            abort(404)
        job = ComposeJob(message_pk=message.id, message_id=message.message_id or "", campaign=campaign, step=step,
                         to_email=message.to_email, name=subscriber.name,
                         unsubscribe_url=rt.unsubscribe_url(subscriber.public_id, campaign.key),
                         now=message.sent_at, public_id=subscriber.public_id)
        html = rt.composer.render(job)[2]
    return Response(html, mimetype="text/html", headers={"Content-Security-Policy": VIEW_CSP})
