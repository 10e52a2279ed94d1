"""The operator's JSON API: `Authorization: Bearer TOKEN`; the OpenAPI document is public.

Every error, whatever raised it, has one shape: `{"error": {"code", "message", "field"}}`. Query
parameters are validated strictly here (the pages parse leniently); the OpenAPI document lives in
`openapi.py` and a test checks it lists exactly these routes.
"""
from __future__ import annotations

from datetime import date

from flask import Blueprint, g, jsonify, request
from werkzeug.exceptions import HTTPException

from service.audience.privacy import erase_subscriber
from service.audience.signups import ConsentMeta, SignupError, parse_signup, signup
from service.core.db import utcnow
from service.core.inputs import BadInput, load_json
from service.core.models import MAX_ID, MESSAGE_STATUSES, SUBSCRIBER_STATUSES
from service.operator import subscribers as people
from service.operator.accounts import check_token, token_allows
from service.operator.campaign_stats import all_stats, campaign_stats, stats_dict
from service.operator.send_log import MAX_LIMIT, MessageFilter, list_messages, message_dict
from service.web import db, runtime
from service.web.openapi import OPENAPI

bp = Blueprint("api", __name__, url_prefix="/api/v1")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def _error(status: int, code: str, message: str, field: str | None = None):
    return jsonify({"error": {"code": code, "message": message, "field": field}}), status


@bp.before_request
def _auth():
    if request.endpoint == "api.openapi":
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    session = db()
    row = check_token(session, token.strip(), now=utcnow()) if scheme.lower() == "bearer" else None
    if row is None:
        resp, status = _error(401, "unauthorized", "send a valid API token as 'Authorization: Bearer TOKEN'")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="drip"'
        return resp, status
    session.commit()
    g.api_token = row.name
    if request.method not in ("GET", "HEAD", "OPTIONS") and not token_allows(row, "write"):
        resp, status = _error(403, "insufficient_scope", "this token may only read; an operator can create one "
                              "that may change subscribers with `drip tokens create NAME --write`")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="drip", error="insufficient_scope", scope="write"'
        return resp, status
    return None


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return _error(exc.status, exc.code, exc.message, exc.field)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    return _error(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def _routing_error(exc: HTTPException):
    """URLs under /api/ that match no route still answer in the API's error shape; other paths are untouched."""
    if request.path.startswith("/api/"):
        return _http_error(exc)
    return exc


# -- query parameters ----------------------------------------------------------------------------------
def _text_arg(name: str, size: int = 320) -> str | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if "\x00" in value or len(value) > size:
        raise ApiError(400, f"invalid_{name}", f"{name} must be at most {size} characters, without NUL", name)
    return value


def _int_arg(name: str, *, low: int = 1, high: int = MAX_ID) -> int | None:
    value = request.args.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and low <= int(value) <= high):
        raise ApiError(400, f"invalid_{name}", f"{name} must be an integer from {low} to {high}", name)
    return int(value)


def _choice_arg(name: str, choices: tuple[str, ...]) -> str | None:
    value = request.args.get(name)
    if value is not None and value not in choices:
        raise ApiError(400, f"invalid_{name}", f"{name} must be one of {', '.join(choices)}", name)
    return value


def _date_arg(name: str) -> str | None:
    value = request.args.get(name)
    if value is None:
        return None
    try:
        if len(value) != 10:
            raise ValueError
        date.fromisoformat(value)
    except ValueError:
        raise ApiError(400, f"invalid_{name}", f"{name} must be a date, YYYY-MM-DD", name) from None
    return value


def _body() -> dict:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send a JSON object with Content-Type: application/json")
    try:
        data = load_json(request.get_data() or b"")
    except BadInput as exc:
        raise ApiError(400, exc.code, exc.message) from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the JSON body must be an object")
    return data


def _subscriber_or_404(subscriber_id: int):
    found = people.get_subscriber(db(), subscriber_id)
    if found is None:
        raise ApiError(404, "not_found", f"no subscriber {subscriber_id}")
    return found


# -- the send log --------------------------------------------------------------------------------------
@bp.get("/messages")
def messages():
    _choice_arg("status", MESSAGE_STATUSES)
    _int_arg("limit", high=MAX_LIMIT)
    _int_arg("before")
    for name in ("campaign", "step", "email"):
        _text_arg(name)
    for name in ("since", "until"):
        _date_arg(name)
    page = list_messages(db(), MessageFilter.from_args(request.args))
    return jsonify({"data": [message_dict(m) for m in page.rows], "next_before": page.next_before})


# -- subscribers ---------------------------------------------------------------------------------------
def subscriber_dict(p, *, full: bool = False) -> dict:
    def iso(v):
        return v.isoformat() if v else None

    d = {"id": p.id, "email": p.email, "name": p.name, "timezone": p.timezone, "status": p.status,
         "created_at": iso(p.created_at), "unsubscribed_at": iso(p.unsubscribed_at)}
    if full:
        s = db()
        views = people.enrollment_views(s, p, runtime().campaigns, set())
        d["enrollments"] = [{"campaign": v.enrollment.campaign, "status": v.enrollment.status,
                             "next_step": v.next_step_key, "next_due_at": iso(v.enrollment.next_due_at),
                             "last_sent_at": iso(v.enrollment.last_sent_at)} for v in views]
        d["consents"] = [{"campaign": c.campaign, "created_at": iso(c.created_at), "source": c.source,
                          "wording": c.wording} for c in people.consents(s, p)]
    return d


@bp.get("/subscribers")
def subscribers():
    flt = people.SubscriberFilter(
        q=_text_arg("q"), status=_choice_arg("status", SUBSCRIBER_STATUSES), campaign=_text_arg("campaign", 64),
        before=_int_arg("before"), limit=_int_arg("limit", high=MAX_LIMIT) or 50)
    page = people.list_subscribers(db(), flt)
    return jsonify({"data": [subscriber_dict(p) for p in page.rows], "next_before": page.next_before})


@bp.post("/subscribers")
def subscriber_create():
    """Same path as the signup webhook (validation, idempotency, consent), with consent source "api"."""
    data, rt, s = _body(), runtime(), db()
    try:
        parsed = parse_signup(data, campaigns=rt.campaigns, default_campaign=rt.settings.default_campaign)
    except SignupError as exc:
        raise ApiError(404 if exc.code == "unknown_campaign" else 400, exc.code, exc.message, exc.field) from None
    source_url = data.get("source_url") if isinstance(data.get("source_url"), str) else None
    meta = ConsentMeta(source="api", source_url=source_url,
                       user_agent=request.headers.get("User-Agent"), ip=request.remote_addr)
    result = signup(s, parsed, campaign=rt.campaigns[parsed.campaign], meta=meta, now=utcnow(),
                    record_ip=rt.settings.record_ip, invite_back=False)
    if result.status == "suppressed":
        s.rollback()
        raise ApiError(409, "suppressed", "this address is on the suppression list and cannot be subscribed", "email")
    if result.status == "inactive":
        s.rollback()
        raise ApiError(409, "inactive", "this address has unsubscribed or bounced; resubscribe it from the "
                       "subscriber page with a reason", "email")
    s.commit()
    if result.created:
        from service.web.public import runtime_wake

        runtime_wake()
    person = people.get_subscriber(s, result.subscriber_id or 0)
    return jsonify({"status": result.status, "subscriber": subscriber_dict(person, full=True)}), (
        201 if result.created else 200)


@bp.get("/subscribers/<int:subscriber_id>")
def subscriber_get(subscriber_id: int):
    return jsonify(subscriber_dict(_subscriber_or_404(subscriber_id), full=True))


@bp.post("/subscribers/<int:subscriber_id>/unsubscribe")
def subscriber_unsubscribe(subscriber_id: int):
    """Idempotent: unsubscribing someone who is not active changes nothing and says so."""
    s, person = db(), _subscriber_or_404(subscriber_id)
    cancelled = 0
    if person.status == "active":
        cancelled = people.unsubscribe(s, person, now=utcnow(), by=f"api token {g.api_token}")
        s.commit()
    return jsonify({"subscriber": subscriber_dict(person, full=True), "cancelled": cancelled})


@bp.delete("/subscribers/<int:subscriber_id>")
def subscriber_erase(subscriber_id: int):
    s, person = db(), _subscriber_or_404(subscriber_id)
    erase_subscriber(s, person, utcnow(), by=f"api token {g.api_token}")
    s.commit()
    return "", 204


# -- campaigns -----------------------------------------------------------------------------------------
@bp.get("/campaigns")
def campaigns():
    stats = all_stats(db(), runtime().campaigns, now=utcnow())
    return jsonify({"data": [stats_dict(c) for c in stats]})


@bp.get("/campaigns/<key>")
def campaign(key: str):
    c = runtime().campaigns.get(key)
    if c is None:
        raise ApiError(404, "not_found", f"no campaign {key[:64]!r}")
    return jsonify(stats_dict(campaign_stats(db(), c, now=utcnow())))


@bp.get("/openapi.json")
def openapi():
    return jsonify(OPENAPI)


