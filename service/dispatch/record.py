"""Record: the outcomes of sent emails, written only for rows still `sending` and held by this worker. The
common outcome (accepted, and the enrollment moves on to a next step) is written set-based; every other
outcome (bounce, deferral, failure, a campaign's last step) goes row by row through `_apply`."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from service.campaigns.model import Campaign, Step
from service.campaigns.schedule import step_due
from service.compose import as_sent
from service.core import events
from service.core.db import DriverSQL, flushed_connection
from service.core.models import Enrollment, Message, Subscriber, UTCDateTime
from service.dispatch.policy import PassSummary
from service.enrollment.advance import advance
from service.enrollment.suppression import stop_for
from service.transports.base import SendResult

if TYPE_CHECKING:
    from service.dispatch.dispatcher import Dispatcher

log = logging.getLogger(__name__)


def write_outcomes(d: Dispatcher, now: datetime, by_id: Mapping[int, SendResult], raws: Mapping[int, bytes],
                    subjects: Mapping[int, str], summary: PassSummary) -> None:
    """Writes outcomes in one transaction. Touches only its arguments and the database, so it may run
    on the recorder thread; `summary` is that write's own tally, merged by the dispatcher's thread."""
    with d.sessions() as session, session.begin():
        rows = session.execute(
            select(Message.id, Message.status, Message.claimed_by, Message.campaign, Message.step_key,
                   Message.step_index, Message.subscriber_id, Message.enrollment_id,
                   Enrollment.status.label("enrollment_status"), Enrollment.next_step, Subscriber.timezone)
            .join(Subscriber, Subscriber.id == Message.subscriber_id)
            .join(Enrollment, Enrollment.id == Message.enrollment_id)
            .where(d.one_of(Message.id, by_id))
            .with_for_update(of=Message)
        ).all()
        contents: list[dict] = []
        sent: list[dict] = []
        moved: list[dict] = []
        history: list[dict] = []
        slow: list[int] = []
        for row in rows:
            raw = raws.get(row.id)
            if row.status != "sending" or row.claimed_by != d.worker_id:
                log.warning("message %s was reclaimed by %s before our outcome was recorded", row.id,
                            row.claimed_by)
                continue
            result = by_id[row.id]
            if raw is not None and not result.transport:  # never handed over: nothing "as sent"
                # The bytes handed to the transport, for the operator's "as sent" view.
                contents.append({"c_id": row.id, "raw": raw, "created_at": now})
            nxt = _next_after(d, row) if result.ok and row.enrollment_status == "active" else None
            if nxt is None:
                slow.append(row.id)
                continue
            events.check_transition(row.id, row.status, "sent")
            campaign, step = nxt
            sent.append({"m_id": row.id, "subj": subjects.get(row.id), "provider_id": result.provider_id,
                         "error": result.error or None})
            moved.append({"e_id": row.enrollment_id, "next_step": step.index, "next_key": step.key,
                          "due": step_due(campaign, step, after=now, reader_timezone=row.timezone)})
            history.append(dict(type="sent", created_at=now, subscriber_id=row.subscriber_id, message_id=row.id,
                                detail=result.error or f"accepted ({result.code or 'ok'})"))
        as_sent.store(session, contents, now)  # the "as sent" copies, one statement per flush
        if sent:
            _write_sent(d, session, sent, moved, now)
            events.record_many(session, history)
            summary.sent += len(sent)
        for message, subscriber, enrollment in load_rows(session, slow):
            if message.id in subjects:
                message.subject = subjects[message.id]
            _apply(d, session, message, subscriber, enrollment, by_id[message.id], now, summary)


def _next_after(d: Dispatcher, row: Row) -> tuple[Campaign, Step] | None:
    """For an accepted message: its campaign and the step its enrollment moves to, or None when there
    is no next step (completion and continuation go through `_advance`)."""
    campaign = d.campaigns.get(row.campaign)
    if campaign is None:
        return None
    here = campaign.step_by_key(row.step_key)  # the step's place in the current file, which may have been edited
    nxt = campaign.step(here.index + 1 if here is not None else max(row.next_step, row.step_index + 1))
    return (campaign, nxt) if nxt is not None else None


# PostgreSQL: a flush's accepted messages and their enrollments (and, in as_sent.py, their
# "as sent" copies) as one statement each over unnested arrays. executemany ran one statement per
# row: ~30 us of the worker's CPU per row in SQLAlchemy and psycopg (three rows per email), and an
# executor start per row on the server. Naive datetimes are refused by DriverSQL, as UTCDateTime does.
_SENT_PG = DriverSQL("""UPDATE messages AS m SET status = 'sent', updated_at = :now, sent_at = :now,
    lease_until = NULL, provider_message_id = v.provider_id, last_error = v.error, subject = coalesce(v.subj, m.subject)
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:subjects AS TEXT[]), CAST(:provider_ids AS TEXT[]),
            CAST(:errors AS TEXT[])) AS v (id, subj, provider_id, error)
WHERE m.id = v.id""", binary=True)


_MOVED_PG = DriverSQL("""UPDATE enrollments AS e SET next_step = v.next_step, next_step_key = v.next_key,
    next_due_at = v.due, due_from = :now, last_sent_at = :now, updated_at = :now
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:steps AS INTEGER[]), CAST(:keys AS TEXT[]),
            CAST(:dues AS TIMESTAMPTZ[])) AS v (id, next_step, next_key, due)
WHERE e.id = v.id AND e.status = 'active'""", binary=True)


def _write_sent(d: Dispatcher, session: Session, sent: list[dict], moved: list[dict], now: datetime) -> None:
    """The common outcome, set-based: the messages become `sent`, their enrollments move on."""
    if session.get_bind().dialect.name == "postgresql":
        # An enrollment listed twice (two of its messages in one flush: an operator's retry) is moved
        # once, by its last row, as the rows applied in order would leave it.
        last = {row["e_id"]: row for row in moved}
        conn = flushed_connection(session)
        _SENT_PG.all(conn, {
            "now": now, "ids": [r["m_id"] for r in sent], "subjects": [r["subj"] for r in sent],
            "provider_ids": [r["provider_id"] for r in sent], "errors": [r["error"] for r in sent]})
        _MOVED_PG.all(conn, {
            "now": now, "ids": list(last), "steps": [r["next_step"] for r in last.values()],
            "keys": [r["next_key"] for r in last.values()], "dues": [r["due"] for r in last.values()]})
        return
    messages, enrollments = Message.__table__, Enrollment.__table__
    session.execute(
        update(messages).where(messages.c.id == bindparam("m_id"))
        .values(status="sent", updated_at=now, sent_at=now, lease_until=None,
                provider_message_id=bindparam("provider_id"), last_error=bindparam("error"),
                subject=func.coalesce(bindparam("subj", type_=messages.c.subject.type), messages.c.subject)),
        sent)
    session.execute(
        update(enrollments).where(enrollments.c.id == bindparam("e_id"), enrollments.c.status == "active")
        .values(next_step=bindparam("next_step"), next_step_key=bindparam("next_key"),
                next_due_at=bindparam("due", type_=UTCDateTime()), due_from=now, last_sent_at=now,
                updated_at=now),
        moved)


def _apply(d: Dispatcher, session: Session, message: Message, subscriber: Subscriber, enrollment: Enrollment,
           result: SendResult, now: datetime, summary: PassSummary) -> None:
    message.lease_until = None
    message.last_error = result.error or None
    if result.ok:
        message.sent_at = now
        message.provider_message_id = result.provider_id
        events.transition(session, message, "sent", now=now,
                          detail=result.error or f"accepted ({result.code or 'ok'})")
        summary.sent += 1
        advance(session, enrollment, subscriber, d.campaigns.get(message.campaign), message, now, d.campaigns)
    elif result.permanent and result.suppress:
        events.transition(session, message, "bounced", now=now, detail=result.error)
        summary.suppressed += stop_for(session, subscriber, "hard_bounce", now=now, detail=result.error)
        summary.bounced += 1
    elif result.transport:
        # Not the reader's fault: the attempt does not count and the message is never given up.
        message.attempts = max(0, message.attempts - 1)
        if message.attempts == 0:  # the give-up clock starts with the first attempt that counts
            message.first_attempt_at = None
        delay = d.retry.delay(max(1, message.attempts), result.retry_after)
        message.next_attempt_at = now + timedelta(seconds=delay)
        events.transition(session, message, "deferred", now=now,
                          detail=f"{result.error}; transport problem, retry in {int(delay)} s")
        summary.deferred += 1
    elif result.permanent or d.retry.exhausted(message.attempts, message.first_attempt_at, now):
        detail = result.error if result.permanent else f"gave up after {message.attempts} attempts: {result.error}"
        message.last_error = detail
        events.transition(session, message, "failed", now=now, detail=detail)
        summary.failed += 1
        advance(session, enrollment, subscriber, d.campaigns.get(message.campaign), message, now, d.campaigns)
    else:
        delay = d.retry.delay(message.attempts, result.retry_after)
        message.next_attempt_at = now + timedelta(seconds=delay)
        events.transition(session, message, "deferred", now=now,
                          detail=f"{result.error}; retry in {int(delay)} s")
        summary.deferred += 1


def load_rows(session: Session, ids: Sequence[int]):
    if not ids:
        return []
    return session.execute(
        select(Message, Subscriber, Enrollment)
        .join(Subscriber, Subscriber.id == Message.subscriber_id)
        .join(Enrollment, Enrollment.id == Message.enrollment_id)
        .where(Message.id.in_(ids))
        .order_by(Message.id)
    ).all()
