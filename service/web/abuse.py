"""Abuse defences for the public signup routes: CORS for configured origins, the honeypot,
and the per-IP / per-address rate limits. public.py calls these; the rules live here.
"""
from __future__ import annotations

import logging
from datetime import datetime

from flask import Response, jsonify, request

from service.audience import ratelimit
from service.core.addresses import mailbox_key
from service.core.config import RateLimit
from service.core.db import utcnow
from service.web import db, runtime

log = logging.getLogger(__name__)

HONEYPOT_FIELD = "website"  # hidden on the form; people leave it empty, form-filling bots do not
SIGNUP_ENDPOINT = "public.signup_webhook"


def _allowed_origin() -> str | None:
    origin = request.headers.get("Origin")
    return origin if origin and origin in runtime().settings.cors_origins else None


def cors_preflight() -> Response | None:
    """Answer the browser's OPTIONS preflight for /signup: only for a configured origin, never with
    credentials (the signup needs no cookie), never with a wildcard."""
    if request.method != "OPTIONS" or request.endpoint != SIGNUP_ENDPOINT:
        return None
    origin = _allowed_origin()
    if origin is None:
        return Response(status=403)
    resp = Response(status=204)
    resp.headers.update({"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": "POST",
                         "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "600",
                         "Vary": "Origin"})
    return resp


def cors_headers(response: Response) -> Response:
    """On the signup response itself, tell a configured origin it may read the answer. With no origin
    configured the answer never depends on Origin, so it says nothing of it (no Vary either)."""
    if not runtime().settings.cors_origins:
        return response
    if request.endpoint == SIGNUP_ENDPOINT and request.method == "POST":
        if "Vary" in response.headers:
            response.vary.add("Origin")
        else:  # the usual case, without parsing and re-serialising a header set
            response.headers["Vary"] = "Origin"
        origin = _allowed_origin()
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
    return response


def honeypot_filled(data: dict) -> bool:
    value = data.get(HONEYPOT_FIELD)
    if value in (None, ""):
        return False
    log.warning("signup honeypot filled from %s; answered as usual, nothing stored or sent", request.remote_addr)
    return True


def _signup_limits(email_key: str) -> list[tuple[RateLimit, str, str, bool]]:
    """(limit, counter key, refusal message, whether its first hit is the new subscriber row) for each
    limit set. The per-address limit counts one inbox: ada+1@, ada+2@ and a.da@gmail.com share a counter,
    or a bot could fill one person's inbox with welcomes through endless variants."""
    settings = runtime().settings
    mailbox = mailbox_key(email_key)
    checks = [(settings.signup_rate_limit, f"signup-ip:{request.remote_addr}",
               "too many signups from this address; try again later", False),
              # Only a signup of the inbox's own address makes the subscriber row that counts its first hit;
              # a variant's subscriber row has another key, so its hit is always counted in the counter.
              (settings.signup_address_rate_limit, f"signup-email:{mailbox}",
               "too many signups for this email address; try again later", mailbox == email_key)]
    return [check for check in checks if check[0] is not None]


def pending_hits(email_key: str, now: datetime) -> list[tuple[ratelimit.PendingHit, str]] | None:
    """With the counters in the database: this signup's per-IP and per-address hits at `now`, each with
    the message for its refusal, for the signup to count in its own transaction (signups.signup). None
    when the counters live in Redis: then limited() counts them."""
    if runtime().settings.rate_limit_storage != "database":
        return None
    # The per-address count of a new address starts with the subscriber row its signup creates.
    return [(ratelimit.pending_hit(key, limit, now, first_is_new_subscriber=row_counts), message)
            for limit, key, message, row_counts in _signup_limits(email_key)]


def refusal(message: str, retry_after: int) -> tuple[Response, int]:
    resp = jsonify({"error": {"code": "rate_limited", "message": message, "field": None}})
    resp.headers["Retry-After"] = str(retry_after)
    return resp, 429


def limited(email_key: str) -> tuple[Response, int] | None:
    """Count this signup against the per-IP and the per-address limits; a 429 with Retry-After past either.
    The per-address limit stops one inbox being bombed through many IPs.

    Counted hits are committed with the signup itself (one transaction, one commit per request);
    a refusal commits at once what was counted before it, as a separate commit per limit did."""
    settings, session, now = runtime().settings, db(), utcnow()
    for limit, key, message, _per_address in _signup_limits(email_key):
        verdict = ratelimit.check(session, settings.rate_limit_storage, key, limit, now)
        if not verdict.allowed:
            session.commit()
            return refusal(message, verdict.retry_after)
    return None
