"""The message status model and the append-only event history.

Every change of a message's status goes through `transition`, which checks it against one explicit
table and writes the event in the same transaction. Events with a provider id apply once.

`transition_many` and `record_many` are the same rules for a batch: the dispatcher moves hundreds of
messages at a time, and one multi-row INSERT plus one executemany UPDATE cost a few milliseconds where
per-row ORM objects cost about a millisecond each (measured in bench/send.py).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from .models import Event, Message

log = logging.getLogger(__name__)

# status -> statuses it may move to. Terminal rows may still gain delivery facts from providers
# (a "sent" message becomes "delivered", "bounced" or "complained"; a delivered one can bounce later).
ALLOWED: dict[str, frozenset[str]] = {
    "queued": frozenset({"sending", "suppressed"}),
    "deferred": frozenset({"sending", "suppressed", "failed"}),
    "sending": frozenset({"sent", "deferred", "failed", "bounced", "suppressed", "sending"}),
    "sent": frozenset({"delivered", "bounced", "complained", "deferred"}),
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
    return event


def already_applied(session: Session, provider_event_id: str) -> bool:
    return session.scalar(select(Event.id).where(Event.provider_event_id == provider_event_id)) is not None


def check_transition(message_id: int, old: str, new: str) -> None:
    """Raise IllegalTransition unless the table allows `old` -> `new` (staying put is always allowed)."""
    if new != old and new not in ALLOWED[old]:
        raise IllegalTransition(f"message {message_id}: {old} -> {new} is not allowed")


def transition(session: Session, message: Message, new: str, *, now: datetime, detail: str | None = None,
               event_type: str | None = None, data: dict | None = None) -> None:
    """Move a message to `new` and append the matching event; refuses moves the table does not allow."""
    check_transition(message.id, message.status, new)
    message.status = new
    message.updated_at = now
    record(session, type=event_type or new, now=now, subscriber_id=message.subscriber_id,
           message_id=message.id, detail=detail, data=data)


def record_many(session: Session, rows: Iterable[Mapping[str, object]], *, now: datetime) -> None:
    """Append many events in one multi-row INSERT. Each row: type, and any of subscriber_id, message_id,
    detail, data. Same vocabulary check as `record`."""
    values = []
    for row in rows:
        if row["type"] not in EVENT_TYPES:
            raise ValueError(f"unknown event type {row['type']!r}")
        values.append({"subscriber_id": None, "message_id": None, "detail": None, "data": None,
                       "provider_event_id": None, "created_at": now, **row})
    if values:
        # The Core table, not the ORM entity: an ORM bulk insert spends ~0.2 ms per row on bookkeeping
        # that append-only rows never need.
        session.execute(insert(Event.__table__), values)


@dataclass(frozen=True)
class Move:
    """One message's status change for `transition_many`: where it is (as read under lock) and where it goes."""

    message_id: int
    subscriber_id: int
    old: str
    new: str
    detail: str | None = None
    event_type: str | None = None
    values: Mapping[str, object] = field(default_factory=dict)  # other columns to set, same keys for every move


def transition_many(session: Session, moves: Sequence[Move], *, now: datetime) -> None:
    """`transition` for a batch: every move is checked against ALLOWED first (one illegal move refuses the
    whole batch), then one executemany UPDATE by primary key and one multi-row INSERT of the events.

    The caller must hold the rows (read them FOR UPDATE, or be SQLite's single writer) so `old` is current.
    """
    if not moves:
        return
    for move in moves:
        check_transition(move.message_id, move.old, move.new)
    # One Core UPDATE ... WHERE id = :p_id, executed for all rows at once (psycopg pipelines executemany);
    # parameters are prefixed because SQLAlchemy reserves bare column names in SET.
    table = Message.__table__
    columns = ["status", "updated_at", *moves[0].values]
    session.execute(
        update(table).where(table.c.id == bindparam("p_id"))
        .values({c: bindparam(f"p_{c}") for c in columns}),
        [{"p_id": m.message_id, "p_status": m.new, "p_updated_at": now,
          **{f"p_{k}": v for k, v in m.values.items()}} for m in moves])
    record_many(session, ({"type": m.event_type or m.new, "subscriber_id": m.subscriber_id,
                           "message_id": m.message_id, "detail": m.detail} for m in moves), now=now)
