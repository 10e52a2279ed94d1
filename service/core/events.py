"""The message status model and the append-only event history.

Every change of a message's status goes through `transition`, which checks it against one explicit
table and writes the event in the same transaction. Events with a provider id apply once.
"""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from service.core.db import DriverSQL, flushed_connection
from service.core.models import Event, Message

log = logging.getLogger(__name__)

# status -> statuses it may move to. Terminal rows may still gain delivery facts from providers
# (a "sent" message becomes "delivered", "bounced" or "complained"; a delivered one can bounce later).
ALLOWED: dict[str, frozenset[str]] = {
    "queued": frozenset({"sending", "suppressed"}),
    # A provider's "deferred" report also parks a sent message here, with no next attempt of ours,
    # until the provider reports delivery or a bounce, or the deferral deadline fails it.
    "deferred": frozenset({"sending", "suppressed", "failed", "delivered", "bounced", "complained"}),
    "sending": frozenset({"sent", "deferred", "failed", "bounced", "suppressed", "sending"}),
    # "failed" after "sent": a bounce email reports a permanent refusal that is not about the mailbox.
    "sent": frozenset({"delivered", "bounced", "complained", "deferred", "failed"}),
    "delivered": frozenset({"bounced", "complained"}),
    "failed": frozenset({"queued"}),  # an operator's retry
    "bounced": frozenset(),
    "complained": frozenset(),
    "suppressed": frozenset(),
}

# Event types (the small vocabulary the send log and timelines read).
EVENT_TYPES = frozenset({
    "signup", "queued", "attempt", "sent", "deferred", "failed", "bounced", "suppressed", "reclaimed",
    "delivered", "complained", "unsubscribed", "resubscribed", "enrollment_stopped", "enrollment_completed",
    "erased",  # anonymous: a subscriber was erased (GDPR); only the address's hash is in `data`
    "soft_bounce", "opened", "clicked", "sending_paused", "sending_resumed",  # delivery tracking
    # the reader's own changes on the preference page
    "left_campaign", "snoozed", "snooze_ended", "profile_updated", "switched_to_digest", "data_exported",
    "continued",  # a completed lead magnet led into its shared sequence
    "reactivated",  # a completed enrollment whose campaign gained steps
    "confirmed",  # a double opt-in link was clicked
    "signup_refused",  # a form post for an address that bounced or complained: nothing was sent
    "confirmation_sent",  # a double opt-in or come-back email went out (transactional: not in the message log)
    "data_link_sent",  # the reader asked to download or erase their data: a link went to their own address
    "held",  # the per-reader daily cap moved a message to the next allowed day
    "unsubscribe_reason",  # the one line a reader may add after unsubscribing (never asked before)
})


class IllegalTransition(ValueError):
    pass


def record(
    session: Session,
    *,
    type: str,
    now: datetime,
    subscriber_id: int | None = None,
    message_id: int | None = None,
    detail: str | None = None,
    data: dict | None = None,
    provider_event_id: str | None = None,
) -> Event:
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    event = Event(type=type, subscriber_id=subscriber_id, message_id=message_id, detail=detail, data=data,
                  provider_event_id=provider_event_id, created_at=now)
    session.add(event)
    if message_id is not None and type in _FIRST_SEEN:
        _mark_first(session, message_id, _FIRST_SEEN[type], now)
    return event


# A tracking event's mark on its message: the first open or click sets the time, later ones find it set.
_FIRST_SEEN = {"opened": "opened_at", "clicked": "clicked_at"}


def _mark_first(session: Session, message_id: int, column: str, now: datetime) -> None:
    """Set the message's first-open (or first-click) time unless it is set. The count triggers count the
    email as opened when this column goes from empty to set, so it counts once however often it is opened:
    two opens racing both run this statement, the second waits for the first's row lock and then finds the
    column set (PostgreSQL re-checks the WHERE on the row the first one committed) and changes nothing."""
    col = getattr(Message, column)
    session.execute(update(Message).where(Message.id == message_id, col.is_(None)).values({col: now})
                    .execution_options(synchronize_session=False))


def already_applied(session: Session, provider_event_id: str) -> bool:
    return session.scalar(select(Event.id).where(Event.provider_event_id == provider_event_id)) is not None


def transition(session: Session, message: Message, new: str, *, now: datetime, detail: str | None = None,
               event_type: str | None = None, data: dict | None = None,
               provider_event_id: str | None = None) -> None:
    """Move a message to `new` and append the matching event; refuses moves the table does not allow."""
    if new != message.status and new not in ALLOWED[message.status]:
        raise IllegalTransition(f"message {message.id}: {message.status} -> {new} is not allowed")
    message.status = new
    message.updated_at = now
    record(session, type=event_type or new, now=now, subscriber_id=message.subscriber_id,
           message_id=message.id, detail=detail, data=data, provider_event_id=provider_event_id)


def check_transition(message_id: int, old: str, new: str) -> None:
    """The ALLOWED check of `transition`, for the dispatcher's set-based writes."""
    if new != old and new not in ALLOWED[old]:
        raise IllegalTransition(f"message {message_id}: {old} -> {new} is not allowed")


def record_many(session: Session, rows: list[dict]) -> None:
    """Append many events in one statement (one INSERT per batch instead of one per message).
    Each row holds `type`, `created_at` and any of subscriber_id, message_id, detail."""
    if not rows:
        return
    for row in rows:
        if row["type"] not in EVENT_TYPES:
            raise ValueError(f"unknown event type {row['type']!r}")
    keys = ("type", "subscriber_id", "message_id", "detail", "created_at")
    if session.get_bind().dialect.name == "postgresql":
        _MANY_PG.all(flushed_connection(session), {k: [row.get(k) for row in rows] for k in keys})
        return
    session.execute(insert(Event), [{k: row.get(k) for k in keys} for row in rows])


# PostgreSQL: one array per column, unnested, in the rows' order (ids follow it). The ORM's bulk
# INSERT built a multi-row VALUES statement with five parameters per event, ~25 us of CPU per event.
_MANY_PG = DriverSQL("""INSERT INTO events (type, subscriber_id, message_id, detail, created_at)
SELECT type, subscriber_id, message_id, detail, created_at
FROM unnest(CAST(:type AS TEXT[]), CAST(:subscriber_id AS BIGINT[]), CAST(:message_id AS BIGINT[]),
            CAST(:detail AS TEXT[]), CAST(:created_at AS TIMESTAMPTZ[]))
     WITH ORDINALITY AS batch (type, subscriber_id, message_id, detail, created_at, n)
ORDER BY n""", binary=True)
