"""GDPR for one person: export everything we hold about them, or erase it.

Erasure deletes the subscriber, their consents, enrollments, messages (with their stored content) and
events; only the SHA-256 of the address stays, in the suppression list, so the address is never mailed
again and no address is kept. One anonymous `erased` event records that an erasure happened.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.core import events
from service.core.models import Consent, Enrollment, Event, Message, MessageContent, Subscriber
from service.enrollment.suppression import email_hash, suppress_address


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def export_subscriber(session: Session, subscriber: Subscriber, *, now: datetime, by: str,
                      operator: str | None = None) -> dict:
    """Everything stored about one person, as JSON-ready values (GDPR art. 15 and 20): the one export,
    for the reader's own download and the operator's alike. The export is recorded in their timeline."""
    sid = subscriber.id
    consents = session.scalars(select(Consent).where(Consent.subscriber_id == sid).order_by(Consent.id)).all()
    enrollments = session.scalars(select(Enrollment).where(Enrollment.subscriber_id == sid)
                                  .order_by(Enrollment.id)).all()
    messages = session.scalars(select(Message).where(Message.subscriber_id == sid).order_by(Message.id)).all()
    history = session.scalars(select(Event).where(Event.subscriber_id == sid)
                              .order_by(Event.created_at, Event.id)).all()
    data = {
        "exported_at": _iso(now),
        "subscriber": {"id": sid, "email": subscriber.email, "name": subscriber.name,
                       "timezone": subscriber.timezone, "status": subscriber.status,
                       "created_at": _iso(subscriber.created_at), "updated_at": _iso(subscriber.updated_at),
                       "unsubscribed_at": _iso(subscriber.unsubscribed_at),
                       "snoozed_until": _iso(subscriber.snoozed_until)},
        "consents": [{"campaign": c.campaign, "created_at": _iso(c.created_at), "source": c.source,
                      "source_url": c.source_url, "user_agent": c.user_agent, "ip": c.ip, "wording": c.wording}
                     for c in consents],
        "enrollments": [{"campaign": e.campaign, "status": e.status, "next_step": e.next_step,
                         "next_due_at": _iso(e.next_due_at), "last_sent_at": _iso(e.last_sent_at),
                         "stopped_reason": e.stopped_reason, "created_at": _iso(e.created_at)}
                        for e in enrollments],
        "messages": [{"id": m.id, "campaign": m.campaign, "step": m.step_key, "to": m.to_email,
                      "subject": m.subject, "status": m.status, "created_at": _iso(m.created_at),
                      "sent_at": _iso(m.sent_at)} for m in messages],
        "events": [{"type": e.type, "message_id": e.message_id, "detail": e.detail,
                    "created_at": _iso(e.created_at)} for e in history],
    }
    # Which operator exported goes in the event's data (the console's timeline shows it); the detail, which
    # the reader's own export repeats, names only the kind of requester.
    events.record(session, type="data_exported", now=now, subscriber_id=sid, detail=f"data exported by {by}",
                  data={"operator": operator} if operator else None)
    return data


def erase_subscriber(session: Session, subscriber: Subscriber, now: datetime, *, by: str = "operator") -> str:
    """Delete the person and all their rows; keep the address's hash suppressed. Returns that hash. The one
    erasure, for the reader's own request on the preference page and the operator's alike.

    The caller commits. Rows are deleted explicitly (children first) rather than trusting ON DELETE
    CASCADE, so the result is the same on every backend and with foreign keys off.
    """
    sid, key = subscriber.id, subscriber.email_key
    message_ids = select(Message.id).where(Message.subscriber_id == sid)
    session.execute(delete(Event).where(Event.message_id.in_(message_ids)))
    session.execute(delete(Event).where(Event.subscriber_id == sid))
    session.execute(delete(MessageContent).where(MessageContent.message_id.in_(message_ids)))
    session.execute(delete(Message).where(Message.subscriber_id == sid))
    session.execute(delete(Enrollment).where(Enrollment.subscriber_id == sid))
    session.execute(delete(Consent).where(Consent.subscriber_id == sid))
    session.execute(delete(Subscriber).where(Subscriber.id == sid))
    session.expunge(subscriber)
    suppress_address(session, key, reason="erased", now=now, detail="erased on request (GDPR art. 17)")
    digest = email_hash(key)
    events.record(session, type="erased", now=now, detail=f"a subscriber was erased by {by}",
                  data={"email_sha256": digest})
    return digest
