"""The OpenAPI 3.1 document of /api/v1. tests/test_api_contract.py checks it names exactly the routes the
blueprint serves, and schemathesis checks the responses against it."""
from __future__ import annotations

from service.core.models import MAX_ID, MESSAGE_STATUSES, SUBSCRIBER_STATUSES
from service.operator.send_log import MAX_LIMIT

NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": required or list(props)}


_MESSAGE = _obj({
    "id": {"type": "integer"}, "campaign": {"type": "string"}, "step": {"type": "string"},
    "to": {"type": "string"}, "status": {"type": "string", "enum": list(MESSAGE_STATUSES)},
    "subject": NULLABLE_STRING, "attempts": {"type": "integer"}, "last_error": NULLABLE_STRING,
    "message_id": NULLABLE_STRING, "provider_message_id": NULLABLE_STRING,
    "created_at": {"type": "string", "format": "date-time"}, "sent_at": NULLABLE_TIME,
    "next_attempt_at": NULLABLE_TIME, "updated_at": {"type": "string", "format": "date-time"},
})
_ERROR = _obj({"error": _obj({"code": {"type": "string"}, "message": {"type": "string"},
                              "field": NULLABLE_STRING})})
_SUBSCRIBER = _obj({
    "id": {"type": "integer"}, "email": {"type": "string"}, "name": {"type": "string"},
    "timezone": NULLABLE_STRING, "status": {"type": "string", "enum": list(SUBSCRIBER_STATUSES)},
    "created_at": {"type": "string", "format": "date-time"}, "unsubscribed_at": NULLABLE_TIME,
})
_SUBSCRIBER_FULL = {"allOf": [{"$ref": "#/components/schemas/Subscriber"}, _obj({
    "enrollments": {"type": "array", "items": _obj({
        "campaign": {"type": "string"}, "status": {"type": "string", "enum": ["active", "completed", "stopped"]},
        "next_step": NULLABLE_STRING, "next_due_at": NULLABLE_TIME, "last_sent_at": NULLABLE_TIME})},
    "consents": {"type": "array", "items": _obj({
        "campaign": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"},
        "source": {"type": "string"}, "wording": {"type": "string"}})},
})]}
_COUNT = {"type": "integer", "minimum": 0}
_CAMPAIGN = _obj({
    "key": {"type": "string"}, "title": {"type": "string"}, "paused": {"type": "boolean"},
    "paused_at": NULLABLE_TIME,
    "enrollments": _obj({"active": _COUNT, "completed": _COUNT, "stopped": _COUNT}),
    "steps": {"type": "array", "items": _obj({
        "index": {"type": "integer"}, "key": {"type": "string"}, "subject": {"type": "string"},
        **{k: _COUNT for k in ("total", "pending", "sent", "delivered", "bounced", "complained", "failed",
                               "suppressed", "unsubscribed_after")}})},
    "sent_per_day": {"type": "array", "description": "last 30 UTC days (empty in the campaign list)",
                     "items": _obj({"date": {"type": "string", "format": "date"}, "sent": _COUNT})},
})


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*codes: str) -> dict:
    text = {"400": "invalid input", "401": "missing, unknown or revoked token",
            "403": "the token may only read (insufficient_scope); changes need a --write token", "404": "not found",
            "409": "the address cannot be subscribed", "415": "the body is not JSON"}
    return {c: _json(_ref("Error"), text[c]) for c in ("401", *codes)}


def _page(item: str) -> dict:
    return _obj({"data": {"type": "array", "items": _ref(item)}, "next_before": {"type": ["integer", "null"]}})


def _q(name: str, schema: dict, description: str = "") -> dict:
    p = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        p["description"] = description
    return p


_TEXT = {"type": "string", "maxLength": 320}
_CURSOR = _q("before", {"type": "integer", "minimum": 1, "maximum": MAX_ID}, "cursor: next_before of the previous page")
_LIMIT = _q("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT})
_ID = {"name": "subscriber_id", "in": "path", "required": True,
       "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}

PATHS = {
    "/api/v1/messages": {"get": {
        "operationId": "listMessages", "summary": "The send log, newest first, with keyset paging",
        "parameters": [
            _q("status", {"type": "string", "enum": list(MESSAGE_STATUSES)}),
            _q("campaign", _TEXT), _q("step", _TEXT), _q("email", _TEXT, "substring of the address"),
            _q("since", {"type": "string", "format": "date"}, "created on or after this UTC day"),
            _q("until", {"type": "string", "format": "date"}, "created on or before this UTC day"),
            _CURSOR, _LIMIT],
        "responses": {"200": _json(_page("Message"), "a page of messages"), **_errors("400")},
    }},
    "/api/v1/subscribers": {
        "get": {
            "operationId": "listSubscribers", "summary": "Subscribers, newest first, with keyset paging",
            "parameters": [_q("q", _TEXT, "substring of the address or the name"),
                           _q("status", {"type": "string", "enum": list(SUBSCRIBER_STATUSES)}),
                           _q("campaign", {"type": "string", "maxLength": 64}, "enrolled in this campaign"),
                           _CURSOR, _LIMIT],
            "responses": {"200": _json(_page("Subscriber"), "a page of subscribers"), **_errors("400")},
        },
        "post": {
            "operationId": "createSubscriber",
            "summary": "Subscribe someone, exactly as the signup webhook does (consent source: api)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["email"], "properties": {
                    "email": {"type": "string", "format": "email"}, "name": {"type": "string", "maxLength": 100},
                    "campaign": {"type": "string"}, "timezone": {"type": "string"},
                    "source_url": {"type": "string"}}}}}},
            "responses": {
                "201": _json(_ref("SubscriberResult"), "subscribed (a new enrollment)"),
                "200": _json(_ref("SubscriberResult"), "already subscribed to that campaign; nothing changed"),
                **_errors("400", "403", "404", "409", "415")},
        },
    },
    "/api/v1/subscribers/{subscriber_id}": {
        "parameters": [_ID],
        "get": {"operationId": "getSubscriber", "summary": "One subscriber with enrollments and consents",
                "responses": {"200": _json(_ref("SubscriberFull"), "the subscriber"), **_errors("404")}},
        "delete": {"operationId": "eraseSubscriber",
                   "summary": "Erase the person (GDPR); only the address's hash stays, suppressed",
                   "responses": {"204": {"description": "erased"}, **_errors("403", "404")}},
    },
    "/api/v1/subscribers/{subscriber_id}/unsubscribe": {
        "parameters": [_ID],
        "post": {"operationId": "unsubscribeSubscriber",
                 "summary": "Stop every campaign and cancel unsent mail (idempotent)",
                 "responses": {"200": _json(_obj({"subscriber": _ref("SubscriberFull"), "cancelled": _COUNT}),
                                            "unsubscribed (or already not active)"), **_errors("403", "404")}},
    },
    "/api/v1/campaigns": {"get": {
        "operationId": "listCampaigns", "summary": "Every loaded campaign with its per-step counts",
        "responses": {"200": _json(_obj({"data": {"type": "array", "items": _ref("Campaign")}}), "campaigns"),
                      **_errors()}}},
    "/api/v1/campaigns/{key}": {
        "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": {"operationId": "getCampaign", "summary": "One campaign: per-step counts and sends per day",
                "responses": {"200": _json(_ref("Campaign"), "the campaign"), **_errors("404")}},
    },
    "/api/v1/openapi.json": {"get": {
        "operationId": "openapi", "summary": "This document", "security": [],
        "responses": {"200": {"description": "the OpenAPI document",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}},
}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Drip operator API", "version": "1",
             "description": "Errors always have the shape {\"error\": {\"code\", \"message\", \"field\"}}. "
                            "A token made with `drip tokens create NAME` may call every GET; POST and DELETE need "
                            "one made with --write (else 403 insufficient_scope)."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Message": _MESSAGE, "Error": _ERROR, "Subscriber": _SUBSCRIBER,
                    "SubscriberFull": _SUBSCRIBER_FULL, "Campaign": _CAMPAIGN,
                    "SubscriberResult": _obj({"status": {"type": "string", "enum": ["created", "existing"]},
                                              "subscriber": _ref("SubscriberFull")})},
    },
    "security": [{"bearer": []}],
    "paths": PATHS,
}
