"""Who must not be mailed: the suppression list, and stopping a subscriber everywhere at once.

Unsubscribes, hard bounces and complaints all end here: the subscriber's status changes, every
enrollment stops and every message not yet handed to a transport is marked `suppressed`. The sending
path checks again just before each send, so a message already claimed by a worker is caught too.
"""
from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from service.core import events
from service.core.models import Enrollment, Message, PendingConfirmation, Subscriber, Suppression

PENDING = ("queued", "deferred")


def email_hash(email_key: str) -> str:
    return hashlib.sha256(email_key.strip().lower().encode("utf-8")).hexdigest()


def is_suppressed(session: Session, email_key: str) -> bool:
    return session.scalar(select(Suppression.id).where(Suppression.email_hash == email_hash(email_key))) is not None


def suppress_address(session: Session, email_key: str, *, reason: str, now: datetime,
                     detail: str | None = None) -> None:
    """Add to the suppression list (idempotent)."""
    if not is_suppressed(session, email_key):
        session.add(Suppression(email_hash=email_hash(email_key), reason=reason, detail=detail, created_at=now))
        session.flush()


def last_sent_step(enrollment_id, until: datetime):
    """The index of the last step of an enrollment sent by `until` (a scalar subquery; NULL if none)."""
    return (select(func.max(Message.step_index))
            .where(Message.enrollment_id == enrollment_id, Message.sent_at.is_not(None), Message.sent_at <= until)
            .scalar_subquery())


def stop_subscriber(session: Session, subscriber: Subscriber, *, status: str, reason: str, now: datetime,
                    detail: str | None = None) -> int:
    """Mark the subscriber `status`, stop all enrollments and cancel unsent messages. Returns how many."""
    subscriber.status = status
    subscriber.updated_at = now
    # Signups still waiting for their confirmation click are void once the reader leaves: a click on a link
    # sent before could otherwise bring back someone who unsubscribed after asking (when both carry the same
    # time, the times cannot tell which came first). A signup after this is a new request, and that one
    # brings a returning reader back.
    session.execute(delete(PendingConfirmation).where(PendingConfirmation.subscriber_id == subscriber.id))
    if status == "unsubscribed" and subscriber.unsubscribed_at is None:
        subscriber.unsubscribed_at = now
    if status == "unsubscribed":  # where in each campaign they left, for the campaign page's funnel
        session.execute(update(Enrollment).where(Enrollment.subscriber_id == subscriber.id).values(
            unsubscribed_after_step=last_sent_step(Enrollment.id, subscriber.unsubscribed_at)))
    session.execute(
        update(Enrollment)
        .where(Enrollment.subscriber_id == subscriber.id, Enrollment.status == "active")
        .values(status="stopped", stopped_reason=reason, next_due_at=None, updated_at=now)
    )
    # A conditional UPDATE, not read-then-write: a message a worker claimed a moment ago is `sending` and
    # stays untouched (the worker's pre-send check catches it), so a real outcome is never overwritten.
    cancelled = session.scalars(
        update(Message)
        .where(Message.subscriber_id == subscriber.id, Message.status.in_(PENDING))
        .values(status="suppressed", updated_at=now, last_error=f"cancelled: {reason}")
        .returning(Message.id)
    ).all()
    for message_id in cancelled:
        events.record(session, type="suppressed", now=now, subscriber_id=subscriber.id, message_id=message_id,
                      detail=f"cancelled: {reason}")
    return len(cancelled)


# What each delivery failure does to the reader: (suppression reason, the subscriber's new status).
STOPS = {"hard_bounce": ("hard_bounce", "bounced"), "soft_bounces": ("soft_bounces", "bounced"),
         "complaint": ("complaint", "complained")}


def stop_for(session: Session, subscriber: Subscriber, kind: str, *, now: datetime, detail: str | None) -> int:
    """The one effect of a hard bounce, of too many soft bounces, or of a complaint, wherever it was learnt
    (the relay's answer at once, a bounce email, a provider's webhook): the address is suppressed for good,
    and the reader stops everywhere with their queued mail cancelled. A reader who had already left keeps
    that status, except that a complaint is always recorded as one. Returns how many emails were cancelled."""
    reason, status = STOPS[kind]
    suppress_address(session, subscriber.email_key, reason=reason, now=now, detail=detail)
    if subscriber.status in ("active", "unsubscribed") or (status == "complained" and subscriber.status != status):
        return stop_subscriber(session, subscriber, status=status, reason=reason.replace("_", " "), now=now,
                               detail=detail)
    return 0
