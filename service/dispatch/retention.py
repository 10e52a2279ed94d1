"""Data retention: the history (events) and the stored bytes of sent emails are kept for
DRIP_EVENT_RETENTION_DAYS, then deleted. Evidence of what a reader asked for stays whatever its age:
unsubscribes, confirmations, resubscriptions and erasures (consent records live in `consents` and are
kept while the subscriber exists; erasing a person deletes those)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.core.models import Event, Message, MessageContent

KEPT_FOREVER = ("unsubscribed", "confirmed", "resubscribed", "erased")


@dataclass(frozen=True)
class Pruned:
    events: int
    contents: int


def prune(session: Session, *, now: datetime, days: int) -> Pruned:
    """Delete events and stored email bytes older than `days`; the caller commits."""
    cutoff = now - timedelta(days=days)
    events = session.execute(
        delete(Event).where(Event.created_at < cutoff, Event.type.not_in(KEPT_FOREVER))
    ).rowcount or 0
    old_messages = select(Message.id).where(Message.created_at < cutoff)
    contents = session.execute(
        delete(MessageContent).where(MessageContent.message_id.in_(old_messages))
    ).rowcount or 0
    return Pruned(events=events, contents=contents)
