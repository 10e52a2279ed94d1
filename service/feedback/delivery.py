"""One status model for what happens after a message leaves us (provider webhooks, DSNs, tracking).

Every source (the five provider webhooks, bounce mailboxes, our own open/click tracker) turns its
payload into `DeliveryEvent`s with one of eight kinds, and `apply` maps each kind onto the message
statuses of `service.events`:

- delivered    -> message `delivered`
- deferred     -> message `deferred` (parked: no retry of ours; the deadline below fails it)
- soft_bounce  -> a `soft_bounce` event; the message is parked as for deferred; the address is suppressed
                  once `soft_threshold` soft bounces fall on distinct days within `soft_window`
- failed       -> message `failed`: refused for good, but not because of the mailbox (too big, content,
                  policy; see service/core/smtp_status.py); the reader stays subscribed, as when the relay
                  refuses the same status at once
- hard_bounce  -> message `bounced`, address suppressed, subscriber `bounced`, every enrollment stopped
- complaint    -> message `complained`, address suppressed, subscriber `complained`, enrollments stopped
- open, click  -> `opened` / `clicked` events only

An event with a provider id applies once (unique `events.provider_event_id`); an event whose message
and subscriber are both unknown is acknowledged and logged, never an error.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core import events
from service.core.models import Event, Message, Subscriber, WebhookToken
from service.enrollment.suppression import stop_for

log = logging.getLogger(__name__)

UNSIGNED_SOURCES = frozenset({"dsn"})  # sources whose named address nobody vouches for
KINDS = frozenset({"delivered", "deferred", "failed", "soft_bounce", "hard_bounce", "complaint", "open", "click"})


@dataclass(frozen=True)
class Policy:
    soft_threshold: int = 3
    soft_window: timedelta = timedelta(days=30)
    deferred_deadline: timedelta = timedelta(hours=72)


@dataclass(frozen=True)
class DeliveryEvent:
    """One normalised fact about one recipient of one message. Any of the four keys may find the message."""

    kind: str
    source: str  # postmark, sendgrid, mailgun, ses, resend, dsn, tracking
    event_id: str | None = None  # the provider's id for this event (dedupe key), without our prefix
    provider_message_id: str | None = None
    message_id_header: str | None = None  # our Message-ID, e.g. from a DSN's returned headers
    message_pk: int | None = None  # from custom args / metadata / VERP
    email: str | None = None
    detail: str = ""
    data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown delivery event kind {self.kind!r}")


def strip_brackets(value: str | None) -> str | None:
    return value.strip().strip("<>").strip() if value else None


def find_message(session: Session, ev: DeliveryEvent) -> Message | None:
    message = session.get(Message, ev.message_pk) if ev.message_pk else None
    if message is None and ev.provider_message_id:
        pid = strip_brackets(ev.provider_message_id)
        message = session.scalars(select(Message).where(
            Message.provider_message_id.in_((pid, f"<{pid}>")))).first()
    if message is None and ev.message_id_header:
        mid = strip_brackets(ev.message_id_header)
        message = session.scalars(select(Message).where(Message.message_id == f"<{mid}>")).first()
    if message is not None and ev.email and message.to_email.lower() != ev.email.strip().lower():
        return None  # one provider message can name several recipients; this fact is about another one
    return message


def apply(session: Session, ev: DeliveryEvent, *, now: datetime, policy: Policy = Policy()) -> str:
    """Apply one event in a savepoint. Returns "applied", "duplicate" or "unknown"."""
    pid = f"{ev.source}:{ev.event_id}"[:255] if ev.event_id else None
    if pid and events.already_applied(session, pid):
        return "duplicate"
    message = find_message(session, ev)
    # A bounce email is not signed: only the message it proves (our signed VERP id, our Message-ID) may decide
    # about a reader, never an address it merely names. Provider webhooks are verified, so theirs may.
    by_address = ev.source not in UNSIGNED_SOURCES
    subscriber = (session.get(Subscriber, message.subscriber_id) if message
                  else _subscriber(session, ev.email) if by_address else None)
    if subscriber is None:
        log.warning("%s %s event for an unknown message (provider id %s, event %s): acknowledged, ignored",
                 ev.source, ev.kind, ev.provider_message_id or ev.message_id_header or ev.message_pk, ev.event_id)
        return "unknown"
    try:
        with session.begin_nested():
            _apply(session, ev, message, subscriber, pid, now, policy)
    except IntegrityError:  # the same provider event applied concurrently by another request
        return "duplicate"
    return "applied"


def _subscriber(session: Session, email: str | None) -> Subscriber | None:
    if not email:
        return None
    return session.scalars(select(Subscriber).where(Subscriber.email_key == email.strip().lower())).first()


def _apply(session: Session, ev: DeliveryEvent, message: Message | None, subscriber: Subscriber, pid: str | None,
           now: datetime, policy: Policy) -> None:
    detail = f"{ev.source}: {ev.detail}".strip().rstrip(":") or ev.source
    data = {"source": ev.source, "kind": ev.kind, **ev.data}
    target = {"delivered": "delivered", "hard_bounce": "bounced", "complaint": "complained",
              "deferred": "deferred", "soft_bounce": "deferred", "failed": "failed"}.get(ev.kind)
    event_type = {"soft_bounce": "soft_bounce", "open": "opened", "click": "clicked"}.get(ev.kind, target)
    moved = False
    if message is not None and target and _may_move(message, target):
        events.transition(session, message, target, now=now, detail=detail, event_type=event_type, data=data,
                          provider_event_id=pid)
        if target == "deferred":
            message.next_attempt_at = None  # the provider retries, not us
        moved = True
    if not moved:  # the fact is still history, even when the status stays (e.g. an open after delivery)
        events.record(session, type=event_type or "delivered", now=now, subscriber_id=subscriber.id,
                      message_id=message.id if message else None, detail=detail, data=data, provider_event_id=pid)
    session.flush()
    if ev.kind in ("hard_bounce", "complaint"):
        stop_for(session, subscriber, ev.kind, now=now, detail=detail)
    elif ev.kind == "soft_bounce" and soft_bounce_days(session, subscriber.id, now, policy) >= policy.soft_threshold:
        stop_for(session, subscriber, "soft_bounces", now=now,
                 detail=f"{policy.soft_threshold} soft bounces within {policy.soft_window.days} days")


def _may_move(message: Message, target: str) -> bool:
    if message.status == target:
        return False
    if target == "deferred" and message.status != "sent":
        return False  # only a message the provider accepted can be deferred by the provider
    if target == "failed" and message.sent_at is None:
        # A refusal reported for a message whose hand-over we have not recorded (still being sent, or in our
        # own retry) stays history only: failing it here would leave its enrollment waiting for good, and
        # the worker's real outcome would be dropped.
        return False
    return target in events.ALLOWED[message.status]


def soft_bounce_days(session: Session, subscriber_id: int, now: datetime, policy: Policy) -> int:
    """Soft bounces in the window, counted at most once per UTC day (Mailman's rule)."""
    stamps = session.scalars(select(Event.created_at).where(
        Event.subscriber_id == subscriber_id, Event.type == "soft_bounce",
        Event.created_at > now - policy.soft_window)).all()
    return len({s.date() for s in stamps})


def expire_deferred(session: Session, *, now: datetime, policy: Policy) -> int:
    """Fail messages a provider has kept deferred past the deadline (they have no retry of ours)."""
    stuck = session.scalars(
        select(Message).where(and_(Message.status == "deferred", Message.next_attempt_at.is_(None),
                                   Message.sent_at.is_not(None), Message.sent_at < now - policy.deferred_deadline))
        .with_for_update(skip_locked=True)
    ).all()
    for message in stuck:
        hours = int(policy.deferred_deadline.total_seconds() // 3600)
        message.last_error = f"still deferred by the provider {hours} h after it was accepted"
        events.transition(session, message, "failed", now=now, detail=message.last_error)
        log.warning("message %s: %s; marked failed", message.id, message.last_error)
    return len(stuck)


def remember_token(session: Session, token: str, *, now: datetime, keep: timedelta = timedelta(days=2)) -> bool:
    """Record a one-time webhook token; False if it was seen before (a replay)."""
    try:
        with session.begin_nested():
            session.add(WebhookToken(token=token[:200], created_at=now))
            session.flush()
    except IntegrityError:
        return False
    session.execute(WebhookToken.__table__.delete().where(WebhookToken.created_at < now - keep))
    return True
