"""Provider webhook payloads -> `DeliveryEvent`s (the one status model in service/feedback/delivery.py).

Parsers tolerate unknown fields and unknown event types (SES and the others add fields over time): an
event they do not map is skipped and logged, never an error. Each parser gets an already verified,
already decoded JSON document.
"""
from __future__ import annotations

import logging

from service.core.inputs import BadInput, load_json
from service.feedback.delivery import DeliveryEvent

log = logging.getLogger(__name__)


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _skip(source: str, kind: object) -> None:
    log.info("%s webhook: event %r is not tracked; ignored", source, kind)


# -- Postmark ----------------------------------------------------------------------------------------
POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "SpamNotification"}
POSTMARK_SOFT = {"SoftBounce", "DnsError", "Undeliverable"}
POSTMARK_DEFERRED = {"Transient"}  # Postmark is still trying; AutoResponder and the rest never count


def parse_postmark(doc: object) -> list[DeliveryEvent]:
    if not isinstance(doc, dict):
        return []
    record, mid = doc.get("RecordType"), doc.get("MessageID")
    pk = _int((doc.get("Metadata") or {}).get("drip_message")) if isinstance(doc.get("Metadata"), dict) else None
    common = {"source": "postmark", "provider_message_id": mid, "message_pk": pk}
    if record == "Delivery":
        return [DeliveryEvent("delivered", event_id=f"delivery:{mid}:{doc.get('Recipient')}",
                              email=doc.get("Recipient"), detail=str(doc.get("Details", "")), **common)]
    if record in ("Bounce", "SpamComplaint"):
        btype = doc.get("Type")
        kind = ("complaint" if record == "SpamComplaint" or btype == "SpamComplaint" else
                "hard_bounce" if btype in POSTMARK_HARD else "soft_bounce" if btype in POSTMARK_SOFT else
                "deferred" if btype in POSTMARK_DEFERRED else None)
        if kind is None:
            _skip("postmark", btype)
            return []
        return [DeliveryEvent(kind, event_id=f"bounce:{doc.get('ID')}", email=doc.get("Email"),
                              detail=f"{btype}: {doc.get('Description') or doc.get('Details') or ''}".strip(),
                              data={"type": btype}, **common)]
    if record in ("Open", "Click"):
        at = doc.get("ReceivedAt")
        return [DeliveryEvent("open" if record == "Open" else "click", event_id=f"{record}:{mid}:{at}",
                              email=doc.get("Recipient"), data={"url": doc.get("OriginalLink")}, **common)]
    _skip("postmark", record)
    return []


# -- SendGrid ----------------------------------------------------------------------------------------
def parse_sendgrid(doc: object) -> list[DeliveryEvent]:
    out = []
    for e in doc if isinstance(doc, list) else []:
        if not isinstance(e, dict):
            continue
        name = e.get("event")
        kind = {"delivered": "delivered", "deferred": "deferred", "spamreport": "complaint", "open": "open",
                "click": "click"}.get(str(name))
        if name == "bounce":
            kind = "soft_bounce" if e.get("type") == "blocked" else "hard_bounce"
        elif name == "dropped" and "bounced address" in str(e.get("reason", "")).lower():
            kind = "hard_bounce"
        if kind is None:
            _skip("sendgrid", name)
            continue
        sg_id = str(e.get("sg_message_id") or "")
        out.append(DeliveryEvent(
            kind, source="sendgrid", event_id=e.get("sg_event_id"), provider_message_id=sg_id.split(".")[0] or None,
            message_pk=_int(e.get("drip_message")), email=e.get("email"),
            detail=f"{name}: {e.get('reason') or e.get('response') or e.get('status') or ''}".strip(),
            data={"url": e.get("url")} if kind == "click" else {}))
    return out


# -- Mailgun -----------------------------------------------------------------------------------------
def parse_mailgun(doc: object) -> list[DeliveryEvent]:
    data = doc.get("event-data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        return []
    name, severity = data.get("event"), data.get("severity")
    kind = {"delivered": "delivered", "complained": "complaint", "opened": "open", "clicked": "click"}.get(str(name))
    if name == "failed":
        kind = "hard_bounce" if severity == "permanent" else "deferred"
    if kind is None:
        _skip("mailgun", name)
        return []
    status = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
    headers = (data.get("message") or {}).get("headers") if isinstance(data.get("message"), dict) else {}
    variables = data.get("user-variables") if isinstance(data.get("user-variables"), dict) else {}
    return [DeliveryEvent(
        kind, source="mailgun", event_id=data.get("id"), provider_message_id=(headers or {}).get("message-id"),
        message_pk=_int(variables.get("drip-message")), email=data.get("recipient"),
        detail=f"{name} {severity or ''} {status.get('code') or ''} {status.get('message') or ''}".strip(),
        data={"url": data.get("url")} if kind == "click" else {})]


# -- Resend ------------------------------------------------------------------------------------------
def parse_resend(doc: object, event_id: str) -> list[DeliveryEvent]:
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        return []
    name, data = doc.get("type"), doc["data"]
    kind = {"email.delivered": "delivered", "email.delivery_delayed": "deferred", "email.complained": "complaint",
            "email.opened": "open", "email.clicked": "click"}.get(str(name))
    bounce = data.get("bounce") if isinstance(data.get("bounce"), dict) else {}
    if name == "email.bounced":
        kind = "soft_bounce" if bounce.get("type") in ("Transient", "Undetermined") else "hard_bounce"
    if kind is None:
        _skip("resend", name)
        return []
    tags = data.get("tags")
    pk = _int(tags.get("drip_message")) if isinstance(tags, dict) else None
    recipients = data.get("to") if isinstance(data.get("to"), list) else [None]
    return [DeliveryEvent(kind, source="resend", event_id=f"{event_id}:{i}", provider_message_id=data.get("email_id"),
                          message_pk=pk, email=to, detail=f"{name}: {bounce.get('message', '')}".strip(),
                          data={"url": (data.get("click") or {}).get("link")} if kind == "click" else {})
            for i, to in enumerate(recipients)]


# -- Amazon SES (inside an SNS Notification; the Message is a JSON string) ---------------------------
def parse_ses(sns_message_id: str, message_text: str) -> list[DeliveryEvent]:
    try:
        doc = load_json(message_text)
    except BadInput as exc:
        log.info("ses webhook: SNS Message refused (%s); ignored", exc.message)
        return []
    if not isinstance(doc, dict):
        return []
    kind_name = doc.get("notificationType") or doc.get("eventType")
    mail = doc.get("mail") if isinstance(doc.get("mail"), dict) else {}
    tags = mail.get("tags") if isinstance(mail.get("tags"), dict) else {}
    pk = _int((tags.get("drip_message") or [None])[0]) if isinstance(tags.get("drip_message"), list) else None
    common = {"source": "ses", "provider_message_id": mail.get("messageId"), "message_pk": pk}
    rows = _ses_rows(kind_name, doc)
    if rows is None:
        _skip("ses", kind_name)
        return []
    return [DeliveryEvent(kind, event_id=f"{sns_message_id}:{i}", email=email, detail=detail, **common)
            for i, (kind, email, detail) in enumerate(rows)]


def _ses_rows(kind_name: object, doc: dict) -> list[tuple[str, str | None, str]] | None:
    def section(name: str) -> dict:
        value = doc.get(name)
        return value if isinstance(value, dict) else {}

    if kind_name == "Bounce":
        b = section("bounce")
        kind = "hard_bounce" if b.get("bounceType") == "Permanent" else "soft_bounce"
        return [(kind, r.get("emailAddress"), f"{b.get('bounceType')}/{b.get('bounceSubType')} "
                 f"{r.get('status', '')} {r.get('diagnosticCode', '')}".strip())
                for r in b.get("bouncedRecipients", []) if isinstance(r, dict)]
    if kind_name == "Complaint":
        c = section("complaint")
        return [("complaint", r.get("emailAddress"), str(c.get("complaintFeedbackType", "")))
                for r in c.get("complainedRecipients", []) if isinstance(r, dict)]
    if kind_name == "Delivery":
        return [("delivered", r, str(section("delivery").get("smtpResponse", "")))
                for r in section("delivery").get("recipients", [])]
    if kind_name == "DeliveryDelay":
        d = section("deliveryDelay")
        return [("deferred", r.get("emailAddress"), str(d.get("delayType", "")))
                for r in d.get("delayedRecipients", []) if isinstance(r, dict)]
    if kind_name in ("Open", "Click"):
        return [("open" if kind_name == "Open" else "click", None, "")]
    return None
