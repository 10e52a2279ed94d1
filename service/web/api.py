"""The operator's JSON API: `Authorization: Bearer TOKEN`; the OpenAPI document is public."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ..accounts import check_token
from ..db import utcnow
from ..models import MESSAGE_STATUSES
from ..reporting import MAX_LIMIT, MessageFilter, list_messages, message_dict
from . import db

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def _error(status: int, code: str, message: str, field: str | None = None):  # noqa: ANN202
    return jsonify({"error": {"code": code, "message": message, "field": field}}), status


@bp.before_request
def _auth():  # noqa: ANN202
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
    return None


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):  # noqa: ANN202
    return _error(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")


@bp.get("/messages")
def messages():  # noqa: ANN201
    args = request.args
    status = args.get("status")
    if status and status not in MESSAGE_STATUSES:
        return _error(400, "invalid_status", f"status must be one of {', '.join(MESSAGE_STATUSES)}", "status")
    for name in ("limit", "before"):
        # ASCII digits only, at most 18 (a 64-bit id); found by schemathesis (issue 7).
        if args.get(name) and not (args[name].isascii() and args[name].isdigit() and len(args[name]) <= 18):
            return _error(400, f"invalid_{name}", f"{name} must be a positive integer", name)
    flt = MessageFilter.from_args(args)
    page = list_messages(db(), flt)
    return jsonify({"data": [message_dict(m) for m in page.rows], "next_before": page.next_before})


@bp.get("/openapi.json")
def openapi():  # noqa: ANN201
    return jsonify(OPENAPI)


_MESSAGE = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"}, "campaign": {"type": "string"}, "step": {"type": "string"},
        "to": {"type": "string"}, "status": {"type": "string", "enum": list(MESSAGE_STATUSES)},
        "subject": {"type": ["string", "null"]}, "attempts": {"type": "integer"},
        "last_error": {"type": ["string", "null"]}, "message_id": {"type": ["string", "null"]},
        "provider_message_id": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "sent_at": {"type": ["string", "null"], "format": "date-time"},
        "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}
_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": ["string", "null"]}}}}}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Drip operator API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Message": _MESSAGE, "Error": _ERROR},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/messages": {
            "get": {
                "summary": "The send log, newest first, with keyset paging",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(MESSAGE_STATUSES)}},
                    {"name": "campaign", "in": "query", "schema": {"type": "string"}},
                    {"name": "step", "in": "query", "schema": {"type": "string"}},
                    {"name": "email", "in": "query", "description": "substring of the address",
                     "schema": {"type": "string"}},
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {"name": "before", "in": "query", "description": "cursor: next_before of the previous page",
                     "schema": {"type": "integer", "minimum": 1}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
                ],
                "responses": {
                    "200": {"description": "a page of messages", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {
                            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
                            "next_before": {"type": ["integer", "null"]}}}}}},
                    "400": {"description": "bad filter", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Error"}}}},
                    "401": {"description": "missing or bad token", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Error"}}}},
                },
            }
        },
    },
}

