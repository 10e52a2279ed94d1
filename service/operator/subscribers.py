"""The operator's view of one reader: search, profile, timeline, and the actions taken on their behalf.

Each action writes an event, so the timeline also shows what the operator did and why. The callers
(admin pages, API, CLI) commit.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.campaigns.model import Campaign
from service.core import events
from service.core.errors import FieldError
from service.core.models import MAX_ID, SUBSCRIBER_STATUSES, Consent, Enrollment, Event, Message, Subscriber
from service.enrollment.suppression import is_suppressed, stop_subscriber
from service.operator.send_log import address_prefix, page_by_id

MAX_LIMIT = 500


class ActionError(FieldError):
    """The action does not apply (wrong state, missing reason); `code` is stable for API callers."""


@dataclass(frozen=True)
class SubscriberFilter:
    q: str | None = None  # the start of an address, or (without an @) also any part of a name
    status: str | None = None
    campaign: str | None = None
    before: int | None = None
    limit: int = 50


@dataclass(frozen=True)
class SubscriberPage:
    rows: list[Subscriber]
    next_before: int | None


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def list_subscribers(session: Session, flt: SubscriberFilter) -> SubscriberPage:
    """Newest first, keyset paging on id."""
    q = select(Subscriber)
    if flt.q and "@" in flt.q:  # an address, whole or its start: an index range (send_log.address_prefix)
        q = q.where(address_prefix(session, Subscriber.email_key, flt.q))
    elif flt.q:  # a word: the start of an address (indexed) or any part of a name (read newest first)
        q = q.where(or_(address_prefix(session, Subscriber.email_key, flt.q),
                        Subscriber.name.ilike(_like(flt.q), escape="\\")))
    if flt.status in SUBSCRIBER_STATUSES:
        q = q.where(Subscriber.status == flt.status)
    if flt.campaign:
        q = q.where(Subscriber.id.in_(select(Enrollment.subscriber_id).where(Enrollment.campaign == flt.campaign)))
    rows, next_before = page_by_id(session, q, Subscriber.id, before=flt.before, limit=flt.limit)
    return SubscriberPage(rows=rows, next_before=next_before)


def get_subscriber(session: Session, subscriber_id: int) -> Subscriber | None:
    if not 0 < subscriber_id <= MAX_ID:
        return None
    return session.get(Subscriber, subscriber_id)


def find_by_email(session: Session, address: str) -> Subscriber | None:
    return session.scalar(select(Subscriber).where(Subscriber.email_key == address.strip().lower()))


@dataclass(frozen=True)
class EnrollmentView:
    enrollment: Enrollment
    next_step_key: str | None
    paused: bool


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    type: str
    detail: str | None
    message: Message | None


def enrollment_views(session: Session, subscriber: Subscriber, campaigns: Mapping[str, Campaign],
                     paused: set[str]) -> list[EnrollmentView]:
    rows = session.scalars(select(Enrollment).where(Enrollment.subscriber_id == subscriber.id)
                           .order_by(Enrollment.id)).all()
    views = []
    for e in rows:
        campaign = campaigns.get(e.campaign)
        step = campaign.step(e.next_step) if campaign and e.status == "active" else None
        views.append(EnrollmentView(e, step.key if step else None, e.campaign in paused))
    return views


def consents(session: Session, subscriber: Subscriber) -> list[Consent]:
    return list(session.scalars(select(Consent).where(Consent.subscriber_id == subscriber.id).order_by(Consent.id)))


def timeline(session: Session, subscriber: Subscriber) -> list[TimelineEntry]:
    """Every event of the person, oldest first, each email's events tied to that email."""
    rows = session.execute(
        select(Event, Message).outerjoin(Message, Message.id == Event.message_id)
        .where(Event.subscriber_id == subscriber.id).order_by(Event.created_at, Event.id)
    ).all()
    return [TimelineEntry(at=e.created_at, type=e.type, detail=e.detail, message=m) for e, m in rows]


def messages_of(session: Session, subscriber: Subscriber) -> list[Message]:
    return list(session.scalars(select(Message).where(Message.subscriber_id == subscriber.id)
                                .order_by(Message.id.desc())))


# -- actions -------------------------------------------------------------------------------------------
def unsubscribe(session: Session, subscriber: Subscriber, *, now: datetime, by: str) -> int:
    """Stop every enrollment and cancel unsent mail, as if the reader had clicked. Returns messages cancelled."""
    if subscriber.status != "active":
        raise ActionError("not_active", f"the subscriber is already {subscriber.status}")
    cancelled = stop_subscriber(session, subscriber, status="unsubscribed", reason="unsubscribed", now=now)
    events.record(session, type="unsubscribed", now=now, subscriber_id=subscriber.id,
                  detail=f"unsubscribed by {by}", data={"method": "operator", "by": by})
    return cancelled


def resubscribe(session: Session, subscriber: Subscriber, *, reason: str, now: datetime, by: str) -> int:
    """Bring back someone who unsubscribed, with the reason on record. Returns enrollments resumed.

    Each stopped enrollment continues with the first step that has no message yet (the email cancelled
    by the unsubscribe is not sent late: one message per step, ever), due at once.
    """
    reason = " ".join(reason.split())[:500]
    if not reason:
        raise ActionError("reason_required", "say why this person is resubscribed", "reason")
    if subscriber.status != "unsubscribed":
        raise ActionError("not_unsubscribed", f"only an unsubscribed reader can be resubscribed (this one is "
                          f"{subscriber.status}: bounced and complaining addresses stay stopped)")
    if is_suppressed(session, subscriber.email_key):
        raise ActionError("suppressed", "the address is on the suppression list")
    subscriber.status = "active"
    subscriber.unsubscribed_at = None
    session.execute(update(Enrollment).where(Enrollment.subscriber_id == subscriber.id)
                    .values(unsubscribed_after_step=None))  # no longer counted as having left
    subscriber.updated_at = now
    resumed = 0
    for e in session.scalars(select(Enrollment).where(Enrollment.subscriber_id == subscriber.id,
                                                      Enrollment.status == "stopped")):
        used = set(session.scalars(select(Message.step_index).where(Message.enrollment_id == e.id)))
        while e.next_step in used:
            e.next_step += 1
        e.status, e.stopped_reason, e.next_due_at, e.updated_at = "active", None, now, now
        e.due_from = None  # due at once, not by a schedule
        resumed += 1
    events.record(session, type="resubscribed", now=now, subscriber_id=subscriber.id,
                  detail=f"resubscribed by {by}: {reason}", data={"reason": reason, "by": by})
    return resumed


def retry_message(session: Session, message: Message, *, now: datetime, by: str) -> None:
    """A failed message goes back to the queue for a fresh round of attempts."""
    if message.status != "failed":
        raise ActionError("not_failed", f"only a failed message can be retried (this one is {message.status})")
    subscriber = session.get(Subscriber, message.subscriber_id)
    if subscriber is None or subscriber.status != "active":
        raise ActionError("not_active", "the subscriber is no longer active")
    previous = message.attempts
    events.transition(session, message, "queued", now=now, detail=f"retry by {by} (after {previous} attempts)")
    message.attempts = 0
    message.first_attempt_at = None
    message.next_attempt_at = now
    message.last_error = None
