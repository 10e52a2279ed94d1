"""`POST /webhooks/<provider>`: provider event webhooks, verified over the raw body, then applied once.

A request that does not verify gets 401/403 and changes nothing. A verified one answers 200 even when
some events are for unknown messages (the provider would otherwise retry forever); those are logged.
"""
from __future__ import annotations

import logging
import time

import requests
from flask import Blueprint, jsonify, request

from service.core.db import utcnow
from service.core.inputs import BadInput, load_json
from service.feedback.delivery import DeliveryEvent, apply, remember_token
from service.feedback.provider_events import parse_mailgun, parse_postmark, parse_resend, parse_sendgrid, parse_ses
from service.feedback.webhook_auth import (
    Rejected,
    check_sns_url,
    verify_basic,
    verify_mailgun,
    verify_sendgrid,
    verify_sns,
    verify_svix,
)
from service.web import db, runtime

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)
FETCH_TIMEOUT = 5
MAX_FETCH_BYTES = 64 * 1024
MAX_BYTES = 5 * 1024 * 1024  # SendGrid batches exceed the app's 64 KB form limit; a 413 would be retried forever


def _json(raw: bytes) -> object:
    try:
        return load_json(raw)
    except BadInput as exc:
        raise Rejected(400, exc.message) from None


def _need(value: str | None, variable: str) -> str:
    if not value:
        raise Rejected(403, f"this webhook is not configured (set {variable})")
    return value


@bp.post("/webhooks/<provider>")
def receive(provider: str):
    handler = HANDLERS.get(provider)
    if handler is None:
        return jsonify({"error": {"code": "unknown_provider", "message": f"no webhook for {provider!r}",
                                  "field": "provider"}}), 404
    request.max_content_length = MAX_BYTES
    raw = request.get_data(cache=False)  # the exact bytes the provider signed
    try:
        found = handler(raw)
    except Rejected as exc:
        log.warning("%s webhook rejected (%s): %s", provider, exc.status, exc.reason)
        return jsonify({"error": {"code": "rejected", "message": exc.reason, "field": None}}), exc.status
    if found is None:  # verified, nothing to apply (replayed token, subscription confirmed)
        return jsonify({"status": "ok", "applied": 0}), 200
    return jsonify(_apply_all(found)), 200


def _apply_all(found: list[DeliveryEvent]) -> dict:
    session, now = db(), utcnow()
    policy = runtime().delivery_policy()
    counts = {"applied": 0, "duplicate": 0, "unknown": 0}
    for ev in found:
        counts[apply(session, ev, now=now, policy=policy)] += 1
    session.commit()
    return {"status": "ok", **counts}


def postmark(raw: bytes) -> list[DeliveryEvent]:
    s = runtime().settings
    verify_basic(_need(s.postmark_webhook_user, "DRIP_POSTMARK_WEBHOOK_USER"),
                 _need(s.postmark_webhook_password, "DRIP_POSTMARK_WEBHOOK_PASSWORD"),
                 request.headers.get("Authorization"))
    return parse_postmark(_json(raw))


def sendgrid(raw: bytes) -> list[DeliveryEvent]:
    key = _need(runtime().settings.sendgrid_webhook_key, "DRIP_SENDGRID_WEBHOOK_KEY")
    verify_sendgrid(key, request.headers, raw, now=time.time())
    return parse_sendgrid(_json(raw))


def mailgun(raw: bytes) -> list[DeliveryEvent] | None:
    key = _need(runtime().settings.mailgun_signing_key, "DRIP_MAILGUN_SIGNING_KEY")
    doc = _json(raw)
    token = verify_mailgun(key, doc, now=time.time())
    session = db()
    if not remember_token(session, token, now=utcnow()):
        log.warning("mailgun webhook: token seen before (replay); acknowledged, not applied")
        return None
    session.commit()
    return parse_mailgun(doc)


def resend(raw: bytes) -> list[DeliveryEvent]:
    secret = _need(runtime().settings.resend_webhook_secret, "DRIP_RESEND_WEBHOOK_SECRET")
    event_id = verify_svix(secret, request.headers, raw, now=time.time())
    return parse_resend(_json(raw), event_id)


def ses(raw: bytes) -> list[DeliveryEvent] | None:
    """Amazon SNS posts text/plain JSON; SES notifications sit in its Message field as a JSON string."""
    s = runtime().settings
    doc = _json(raw)
    if not isinstance(doc, dict):
        raise Rejected(400, "not an SNS message")
    topics = s.sns_topic_arns or _need(None, "DRIP_SNS_TOPIC_ARNS")
    verify_sns(doc, topic_arns=topics, cert_hosts=s.sns_cert_hosts, fetch=_fetch)
    if doc["Type"] == "SubscriptionConfirmation":
        # Only now, with the signature verified, is SubscribeURL known to come from AWS; it still has to
        # point at an SNS host, like the certificate.
        subscribe_url = check_sns_url(str(doc.get("SubscribeURL", "")), s.sns_cert_hosts, "SubscribeURL")
        try:
            _fetch(subscribe_url)
        except requests.RequestException as exc:
            raise Rejected(502, f"cannot confirm the SNS subscription: {type(exc).__name__}") from None
        log.warning("SNS subscription to %s confirmed", doc.get("TopicArn"))
        return None
    if doc["Type"] == "UnsubscribeConfirmation":
        log.warning("SNS topic %s unsubscribed this endpoint", doc.get("TopicArn"))
        return None
    return parse_ses(str(doc.get("MessageId")), str(doc.get("Message", "")))


def _fetch(url: str) -> bytes:
    """GET a URL that passed `check_sns_url`: no redirect (no hop off the checked host), 2xx only, and at
    most MAX_FETCH_BYTES (a certificate is a few KB; a huge answer is not one)."""
    with requests.get(url, timeout=FETCH_TIMEOUT, allow_redirects=False, stream=True) as response:
        if not 200 <= response.status_code < 300:
            raise requests.HTTPError(f"{response.status_code} from the SNS host", response=response)
        body = response.raw.read(MAX_FETCH_BYTES + 1, decode_content=True)
    if len(body) > MAX_FETCH_BYTES:
        raise requests.HTTPError("the SNS host answered more than a certificate")
    return body


HANDLERS = {"postmark": postmark, "sendgrid": sendgrid, "mailgun": mailgun, "resend": resend, "ses": ses}
