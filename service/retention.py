"""Data retention: the history (events) and the stored bytes of sent emails are kept for
DRIP_EVENT_RETENTION_DAYS, then deleted. Evidence of what a reader asked for stays whatever its age:
unsubscribes, confirmations, resubscriptions and erasures (consent records live in `consents` and are
kept while the subscriber exists; erasing a person deletes those)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from .models import Event, Message, MessageContent

KEPT_FOREVER = ("unsubscribed", "confirmed", "resubscribed", "erased")


@dataclass(frozen=True)
class Pruned:
    events: int
    contents: int


def prune(session: Session, *, now: datetime, days: int) -> Pruned:
    """Delete events and stored email bytes older than `days`; the caller commits."""
    cutoff = now - timedelta(days=days)
    last = last_event_before(session, cutoff)
    events = 0
    if last is not None:
        events = session.execute(
            delete(Event).where(Event.id <= last, Event.created_at < cutoff, Event.type.not_in(KEPT_FOREVER))
        ).rowcount or 0
    old_messages = select(Message.id).where(Message.created_at < cutoff)
    contents = session.execute(
        delete(MessageContent).where(MessageContent.message_id.in_(old_messages))
    ).rowcount or 0
    return Pruned(events=events, contents=contents)


def last_event_before(session: Session, cutoff: datetime) -> int | None:
    """The id of the last event written before `cutoff`, found by bisecting the primary key (issue 6: no
    index on the events' time, which every event paid for). Events are written in time order, give or
    take the seconds of a pass, so ids up to the answer are older than the cutoff; an older event
    written after a newer one is deleted by a later pruning, once the events before it are old enough,
    and the delete checks each event's own time too: nothing newer than the cutoff is ever deleted."""
    low, high = session.execute(select(func.min(Event.id), func.max(Event.id))).one()
    if low is None or _first_from(session, low)[1] >= cutoff:
        return None
    # `low` is an event older than the cutoff; the answer is in [low, high].
    while low < high:
        found, created = _first_from(session, (low + high + 1) // 2)
        if created < cutoff:
            low = found
        else:
            high = (low + high + 1) // 2 - 1
    return low


def _first_from(session: Session, event_id: int) -> tuple[int, datetime]:
    """(id, created_at) of the first event whose id is `event_id` or above (one primary-key seek)."""
    return session.execute(select(Event.id, Event.created_at).where(Event.id >= event_id)
                           .order_by(Event.id).limit(1)).one()
