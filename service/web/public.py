"""Public routes: the home page form, the signup webhook, thank-you pages, unsubscribe, health, metrics."""
from __future__ import annotations

import hmac
import logging
from datetime import timedelta

from flask import Blueprint, Request, Response, abort, current_app, jsonify, redirect, render_template, request, url_for
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import RequestEntityTooLarge

from service.audience.signups import ConsentMeta, SignupError, parse_signup, signup, signup_known, signup_new
from service.audience.unsubscribe import find_subscriber, record_reason, unsubscribe
from service.campaigns.schedule import valid_timezone
from service.core.db import driver_transaction, utcnow
from service.core.inputs import BadInput, load_json
from service.core.tokens import BadToken, make_preferences_token, read_unsubscribe_token
from service.dispatch.sending_pause import paused_reason
from service.operator.metrics import render_metrics
from service.web import abuse, db, runtime, wants_json

log = logging.getLogger(__name__)
bp = Blueprint("public", __name__)
# CORS preflight and response headers for /signup, only for DRIP_CORS_ORIGINS (see web/abuse.py).
bp.before_request(abuse.cors_preflight)
bp.after_request(abuse.cors_headers)


def error(code: str, message: str, field: str | None, status: int) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, "field": field}}), status


@bp.get("/")
def home():
    rt = runtime()
    campaign = rt.campaigns[rt.settings.default_campaign]
    return render_template("home.html", campaign=campaign, error=None, values={})


@bp.app_template_filter("consent_parts")
def consent_parts(consent: str) -> tuple[str, str]:
    """A campaign's consent is its form's words, "headline [button: label]": the home page shows exactly those
    words (headline above, label on the button), so the stored consent is what this form showed too."""
    headline, sep, rest = consent.partition(" [button: ")
    return (headline, rest.removesuffix("]")) if sep and rest.endswith("]") else (consent, "Send it to me")


@bp.app_context_processor
def _local_outbox() -> dict:
    """The home page tells a newcomer running the embedded default that emails stay on this machine and
    where to read them: the console's outbox viewer, behind the login. Never the folder's path: the page
    is public, and a server's file layout is nobody's business."""
    return {"local_outbox": runtime().settings.email_url.startswith("file://")}


@bp.post("/signup")
@bp.post("/signup/<campaign>")
def signup_webhook(campaign: str | None = None):
    req = request._get_current_object()  # the proxy resolved once, not at every use
    as_json = wants_json(req)
    try:
        data = _read_body(req)
    except SignupError as exc:
        return _signup_error(exc, as_json, {}, campaign, 400 if exc.code != "unsupported_media_type" else 415)
    rt = runtime()
    if not as_json and data.get("timezone") and not valid_timezone(str(data.get("timezone"))):
        # The hidden field is filled by the reader's browser; they cannot fix it, so fall back to the
        # campaign's zone instead of refusing the signup.
        log.info("ignoring unknown browser time zone %r", str(data.get("timezone"))[:64])
        data = {k: v for k, v in data.items() if k != "timezone"}
    try:
        parsed = parse_signup(data, campaigns=rt.campaigns, default_campaign=rt.settings.default_campaign,
                              campaign_in_path=campaign)
    except SignupError as exc:
        return _signup_error(exc, as_json, data, campaign, 404 if exc.code == "unknown_campaign" and campaign else 400)

    if abuse.honeypot_filled(data):  # look like success, store and send nothing
        return _looks_accepted(as_json, parsed)
    # Per-IP and per-address limits. Counters in the database are counted by the signup itself,
    # in its transaction (on PostgreSQL in its one statement); counters in Redis first, here.
    now, campaign_ = utcnow(), rt.campaigns[parsed.campaign]
    hits = abuse.pending_hits(parsed.email_key, now)
    refused = abuse.limited(parsed.email_key) if hits is None else None
    if refused is not None:
        return _rate_limited(refused, as_json, data, campaign)
    environ = req.environ  # the two headers straight from the WSGI environ, as request.headers reads them
    meta = ConsentMeta(source="json" if req.is_json else "form",
                       source_url=_str(data.get("source_url")) or environ.get("HTTP_REFERER"),
                       user_agent=environ.get("HTTP_USER_AGENT"), ip=req.remote_addr)
    rate_hits = [pending for pending, _message in hits or ()]
    cooldown = timedelta(minutes=rt.settings.confirm_cooldown_minutes)
    if campaign_.double_opt_in:
        session = db()
        result = signup(session, parsed, campaign=campaign_, meta=meta, now=now, record_ip=rt.settings.record_ip,
                        confirm_cooldown=cooldown, rate_hits=rate_hits)
        session.commit()
    else:
        # A new address (the common case) in one transaction straight on a pooled driver
        # connection, no ORM session; a known or suppressed one then through the ORM, its rate-limit hits
        # already counted.
        with driver_transaction(rt.sessions.kw["bind"]) as conn:
            result = signup_new(conn, parsed, campaign=campaign_, meta=meta, now=now, record_ip=rt.settings.record_ip,
                                rate_hits=rate_hits)
        if result is None:
            session = db()
            result = signup_known(session, parsed, campaign=campaign_, meta=meta, now=now,
                                  record_ip=rt.settings.record_ip, confirm_cooldown=cooldown)
            session.commit()
    if result.status == "rate_limited":
        pending, message = hits[result.refused_by]
        return _rate_limited(abuse.refusal(message, pending.retry_after), as_json, data, campaign)
    if result.status in ("created", "pending", "returning"):  # a granted confirmation email goes at once too
        runtime_wake()
    if not as_json:
        # The thank-you page tells the truth: a returning reader must click the emailed link first; an
        # address whose mail bounced or was reported as spam gets nothing at all.
        state = {"returning": "check-inbox", "returning_cooldown": "check-inbox", "inactive": "not-sent",
                 "suppressed": "not-sent"}.get(result.status)
        return redirect(url_for("public.thanks", campaign=parsed.campaign, state=state), code=303)
    body = {"status": "subscribed" if result.status in ("created", "existing") else "not_subscribed",
            "campaign": parsed.campaign, "email": parsed.email}
    if result.status.startswith(("pending", "returning")):  # the same answer, sent or cooling down
        body["status"] = "confirmation_sent"
    if result.status.startswith("returning"):
        body["detail"] = "this address had unsubscribed; it comes back only by clicking the link emailed to it"
    if result.status in ("inactive", "suppressed"):
        body["detail"] = "mail to this address bounced or was reported as spam; nothing is sent to it"
    return jsonify(body), 201 if result.created else 200


def _rate_limited(refused, as_json: bool, data: dict, campaign: str | None):
    if as_json:
        return refused
    # A browser gets the form again with the message (and the same Retry-After), not a JSON blob.
    resp, status = refused
    message = resp.get_json()["error"]["message"]
    page, _ = _signup_error(SignupError("rate_limited", message[:1].upper() + message[1:] + ".", None),
                            False, data, campaign, 429)
    html = current_app.make_response(page)
    html.headers["Retry-After"] = resp.headers["Retry-After"]
    return html, status


def _looks_accepted(as_json: bool, parsed):
    if not as_json:
        return redirect(url_for("public.thanks", campaign=parsed.campaign), code=303)
    return jsonify({"status": "subscribed", "campaign": parsed.campaign, "email": parsed.email}), 201


def runtime_wake() -> None:
    try:
        current_app.extensions["drip.wake"]()
    except Exception:  # waking the scheduler early is a courtesy; the next tick sends anyway
        log.exception("could not wake the scheduler")


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _read_body(request: Request) -> dict:
    if request.is_json:
        raw = request.get_data(cache=True)
        try:
            data = load_json(raw or b"")
        except BadInput as exc:
            raise SignupError(exc.code, exc.message, None) from None
        if not isinstance(data, dict):
            raise SignupError("malformed_json", "the JSON body must be an object", None)
        return data
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return request.form.to_dict()
    if not request.get_data(cache=True):
        return {}
    raise SignupError("unsupported_media_type",
                      "send application/json or a form (application/x-www-form-urlencoded)", None)


def _signup_error(exc: SignupError, as_json: bool, data: dict, campaign: str | None, status: int):
    if as_json:
        return error(exc.code, exc.message, exc.field, status)
    rt = runtime()
    shown = rt.campaigns.get(campaign or _str(data.get("campaign")) or "") or rt.campaigns[rt.settings.default_campaign]
    values = {k: v for k, v in data.items() if k in ("email", "name") and isinstance(v, str)}
    return render_template("home.html", campaign=shown, error=exc, values=values), status


@bp.errorhandler(RequestEntityTooLarge)
def too_large(_exc):
    limit = runtime().settings.max_body_bytes
    return error("too_large", f"the request body is larger than {limit} bytes", None, 413)


@bp.get("/thanks/<campaign>")
def thanks(campaign: str):
    c = runtime().campaigns.get(campaign)
    if c is None:
        abort(404)
    state = request.args.get("state")
    return render_template("thanks.html", campaign=c, state=state if state in ("check-inbox", "not-sent") else None)


def _claim(token: str):
    rt = runtime()
    try:
        return read_unsubscribe_token(rt.settings.secret_key, token, max_age_days=rt.settings.unsubscribe_max_age_days)
    except BadToken:
        return None


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str):
    claim = _claim(token)
    subscriber = find_subscriber(db(), claim) if claim else None
    if subscriber is None:
        return render_template("unsubscribe.html", state="invalid", campaign=None), 404
    campaign = runtime().campaigns.get(claim.campaign)
    state = "ask" if subscriber.status == "active" else "done"
    return render_template("unsubscribe.html", state=state, campaign=campaign, token=token,
                           preferences_path=_preferences_path(subscriber.public_id))


def _preferences_path(public_id: str) -> str:
    """The unsubscribe page offers "fewer emails or a pause" on the preference page first."""
    token = make_preferences_token(runtime().settings.secret_key, public_id=public_id)
    return url_for("reader.preferences_page", token=token)


@bp.post("/unsubscribe/<token>")
def unsubscribe_post(token: str):
    """RFC 8058: no cookies, no CSRF token, no redirect; 200 once it is done. Also the page's button."""
    claim = _claim(token)
    if claim is None:
        return render_template("unsubscribe.html", state="invalid", campaign=None), 404
    session = db()
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    try:
        result = unsubscribe(session, claim, now=utcnow(), method="one-click" if one_click else "page")
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        log.exception("unsubscribe failed")
        return render_template("unsubscribe.html", state="error", campaign=None), 503
    if not result.found:
        return render_template("unsubscribe.html", state="invalid", campaign=None), 404
    return render_template("unsubscribe.html", state="done", campaign=runtime().campaigns.get(claim.campaign),
                           token=token), 200


@bp.post("/unsubscribe/<token>/reason")
def unsubscribe_reason(token: str):
    """After the unsubscribe is done, the reader may say why in one optional line. The unsubscribe never
    depends on it: this is a second, separate form on the confirmation page."""
    claim = _claim(token)
    if claim is None:
        return render_template("unsubscribe.html", state="invalid", campaign=None), 404
    session = db()
    recorded = record_reason(session, claim, request.form.get("reason", ""), now=utcnow())
    session.commit()
    return render_template("unsubscribe.html", state="done", campaign=runtime().campaigns.get(claim.campaign),
                           token=None, thanked=recorded), 200


@bp.get("/healthz")
def healthz():
    try:
        db().execute(text("SELECT 1"))
    except SQLAlchemyError:
        return jsonify({"status": "error", "database": "unreachable"}), 503
    paused = paused_reason(db())  # a provider refused our key; the app is up, sending is not
    if paused:
        return jsonify({"status": "degraded", "sending": "paused", "reason": paused})
    return jsonify({"status": "ok"})


@bp.get("/metrics")
def metrics():
    token = runtime().settings.metrics_token
    if token:  # DRIP_METRICS_TOKEN: Prometheus sends it as a bearer token
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return Response("metrics need Authorization: Bearer <DRIP_METRICS_TOKEN>\n", status=401,
                            content_type="text/plain; charset=utf-8", headers={"WWW-Authenticate": "Bearer"})
    body, content_type = render_metrics(db())
    return Response(body, content_type=content_type)
