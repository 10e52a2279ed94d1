"""Data retention: the history (events) and the stored bytes of sent emails are kept for
DRIP_EVENT_RETENTION_DAYS, then deleted. Evidence of what a reader asked for stays whatever its age:
unsubscribes, confirmations, resubscriptions and erasures (consent records live in `consents` and are
kept while the subscriber exists; erasing a person deletes those).

Deletion goes in batches of at most BATCH rows, each its own transaction: a year of history is millions
of rows, and one transaction would hold its locks, its write-ahead log and (fetched ids) its memory until
the end. Each batch walks an index from where the previous one stopped, so memory stays one batch and no
batch reads more than it deletes (plus the kept evidence it steps over)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session

from service.core.models import Event, Message, MessageContent

KEPT_FOREVER = ("unsubscribed", "confirmed", "resubscribed", "erased")
BATCH = 10_000
# Stored copies are found through their messages' creation time. The walk starts a day before the
# oldest message still holding a copy (ids follow creation, within far less than a day across workers),
# instead of stepping over every old message whose copy went in an earlier run.
_MARGIN = timedelta(days=1)


@dataclass(frozen=True)
class Pruned:
    events: int
    contents: int


def prune(sessions: Callable[[], Session], *, now: datetime, days: int, batch: int = BATCH,
          progress: Callable[[Pruned], None] | None = None) -> Pruned:
    """Delete events and stored email bytes older than `days`, `batch` rows per transaction (each
    committed here). `progress` hears the running totals after each batch."""
    cutoff = now - timedelta(days=days)
    events = contents = 0
    after: tuple[datetime, int] | None = None
    while True:  # events, oldest first, by ix_events_created
        with sessions() as session, session.begin():
            q = select(Event.id, Event.created_at).where(Event.created_at < cutoff, Event.type.not_in(KEPT_FOREVER))
            if after:
                q = q.where(or_(Event.created_at > after[0], and_(Event.created_at == after[0], Event.id > after[1])))
            rows = session.execute(q.order_by(Event.created_at, Event.id).limit(batch)).all()
            if rows:
                events += session.execute(delete(Event).where(Event.id.in_([r.id for r in rows]))).rowcount or 0
        if progress and rows:
            progress(Pruned(events, contents))
        if len(rows) < batch:
            break
        after = (rows[-1].created_at, rows[-1].id)
    with sessions() as session:
        oldest = session.scalar(select(Message.created_at).join(MessageContent, MessageContent.message_id == Message.id)
                                .order_by(MessageContent.message_id).limit(1))
    after = (oldest - _MARGIN, 0) if oldest is not None else None
    while oldest is not None:  # stored copies, through their old messages by ix_messages_created
        with sessions() as session, session.begin():
            q = select(Message.id, Message.created_at).where(Message.created_at < cutoff)
            if after:
                q = q.where(or_(Message.created_at > after[0], and_(Message.created_at == after[0],
                                                                    Message.id > after[1])))
            rows = session.execute(q.order_by(Message.created_at, Message.id).limit(batch)).all()
            if rows:
                contents += session.execute(delete(MessageContent).where(
                    MessageContent.message_id.in_([r.id for r in rows]))).rowcount or 0
        if progress and rows:
            progress(Pruned(events, contents))
        if len(rows) < batch:
            break
        after = (rows[-1].created_at, rows[-1].id)
    return Pruned(events=events, contents=contents)
