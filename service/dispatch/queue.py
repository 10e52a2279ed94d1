"""Queue: every active enrollment whose next step is due gets its message row (one per enrollment and step,
by the unique key), and stops being due until that message is finished, so a pass sends at most one
email per enrollment and a service that was down catches up without a burst. A paused campaign or a
snoozed reader waits where it is."""
from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from service.campaigns.model import Campaign, Step
from service.core import events
from service.core.addresses import new_message_id
from service.core.db import DriverSQL, flushed_connection
from service.core.models import CampaignState, Enrollment, Message, Subscriber
from service.dispatch.policy import PassSummary
from service.enrollment import live_edits
from service.enrollment.advance import continue_into

if TYPE_CHECKING:
    from service.dispatch.dispatcher import Dispatcher

log = logging.getLogger(__name__)


def paused_campaigns():
    # Pause/resume: a paused campaign's enrollments are not queued and its messages are not
    # claimed; both wait exactly where they are until the operator resumes it.
    return select(CampaignState.campaign).where(CampaignState.paused.is_(True))


def not_snoozed(subscriber_id, now: datetime):
    """Rows whose reader is not snoozed at `now` (a preference-page pause). Nothing is cancelled or
    shifted: queued mail and due steps simply wait, and when the snooze ends each enrollment resumes with
    its next step; the step after it is scheduled from that send, so there is no burst."""
    # A correlated NOT EXISTS, not `NOT IN (SELECT id ... WHERE snoozed_until > now)`: that form
    # made PostgreSQL hash-join the whole subscribers table into every queue and claim (245 ms per batch
    # with a million readers); this one is a lookup per candidate row, served by the small partial index
    # ix_subscribers_snoozed when the planner prefers an anti-join.
    # The subquery reads its own alias of the readers' table. With the plain table, a query that already
    # joins subscribers would make the subquery compare `subscribers.id` with itself (SQLAlchemy will not
    # correlate a subquery's only table away), asking "is anyone snoozed" instead of "is this reader".
    reader = aliased(Subscriber)
    snoozed = select(reader.id).where(reader.id == subscriber_id, reader.snoozed_until > now)
    return ~snoozed.exists()


def queue_due(d: Dispatcher, now: datetime, summary: PassSummary) -> int:
    """Queue the next step of up to `batch_size` due enrollments. The common case (campaign
    loaded, reader active, a step to send) is written set-based: one multi-row INSERT of the messages,
    one UPDATE of the enrollments, one INSERT of the events per batch, instead of three statements and
    an ORM flush per reader (it ran at ~160 readers/s, so a 100k backlog waited minutes to start)."""
    with d.sessions() as session, session.begin():
        rows = session.execute(
            select(Enrollment.id, Enrollment.subscriber_id, Enrollment.campaign, Enrollment.next_step,
                   Subscriber.status.label("subscriber_status"), Subscriber.email)
            .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
            .where(Enrollment.status == "active", Enrollment.next_due_at <= now,
                   Enrollment.campaign.not_in(paused_campaigns()))
            .where(not_snoozed(Enrollment.subscriber_id, now))  # a snoozed reader's steps wait
            .order_by(Enrollment.next_due_at, Enrollment.id)
            .limit(d.batch_size)
            .with_for_update(skip_locked=True, of=Enrollment)
        ).all()
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        had = live_edits.sent_keys(session, [row.id for row in rows])  # the reader's place, by step keys
        wanted: dict[int, tuple[Step, Campaign]] = {}
        values: list[dict] = []
        for row in rows:  # plain rows; the rare cases below load the ORM objects (already locked)
            campaign = d.campaigns.get(row.campaign)
            if campaign is None:
                log.warning("enrollment %s: campaign %r is not loaded; left waiting", row.id, row.campaign)
                session.get_one(Enrollment, row.id).next_due_at = now + timedelta(hours=1)
                continue
            step = live_edits.next_step(campaign, row, had[row.id])  # by key, so campaign.toml can be edited live
            if step is None or row.subscriber_status != "active":
                enrollment = session.get_one(Enrollment, row.id)
                _finish_enrollment(session, enrollment, now, completed=step is None, summary=summary)
                if step is None and row.subscriber_status == "active":  # a lead magnet leads into its sequence
                    continue_into(session, enrollment, session.get_one(Subscriber, row.subscriber_id),
                                  campaign, now, d.campaigns)
                continue
            wanted[row.id] = (step, campaign)
            values.append(dict(
                enrollment_id=row.id, subscriber_id=row.subscriber_id, campaign=campaign.key,
                step_key=step.key, step_index=step.index, to_email=row.email, status="queued",
                attempts=0, next_attempt_at=now, created_at=now, updated_at=now,
                message_id=new_message_id(d.composer.from_header(campaign), row.id, secrets.token_hex(10))))
        if not values:
            return len(rows)
        inserted = _insert_queued(d, session, insert, values, now)
        if inserted:
            enrollments = Enrollment.__table__
            session.execute(update(enrollments).where(d.one_of(enrollments.c.id, inserted))
                            .values(next_due_at=None, updated_at=now))
        queued_events = []
        subscriber_of = {row.id: row.subscriber_id for row in rows}
        for enrollment_id, (step, campaign) in wanted.items():
            message_pk = inserted.get(enrollment_id)
            if message_pk is None:  # the step's message exists already
                enrollment = session.get_one(Enrollment, enrollment_id)
                enrollment.next_due_at = None
                enrollment.updated_at = now
                _step_already_queued(d, session, enrollment, step, now)
                continue
            queued_events.append(dict(type="queued", created_at=now, subscriber_id=subscriber_of[enrollment_id],
                                      message_id=message_pk, detail=f"{campaign.key}/{step.key} queued"))
        summary.queued += len(queued_events)
        events.record_many(session, queued_events)
        return len(rows)


# PostgreSQL: the batch's messages as one array per column, unnested. The same short statement
# for every batch: SQLAlchemy's multi-row INSERT for 200 messages was 80 KB of SQL with 2,400
# parameters, built and then parsed by psycopg anew for every batch (~35 us of CPU per email).
_QUEUE_PG = DriverSQL("""INSERT INTO messages (enrollment_id, subscriber_id, campaign, step_key, step_index,
    to_email, status, attempts, next_attempt_at, created_at, updated_at, message_id)
SELECT e, s, c, k, i, t, 'queued', 0, :now, :now, :now, m
FROM unnest(CAST(:e AS BIGINT[]), CAST(:s AS BIGINT[]), CAST(:c AS TEXT[]), CAST(:k AS TEXT[]),
            CAST(:i AS INTEGER[]), CAST(:t AS TEXT[]), CAST(:m AS TEXT[])) AS batch (e, s, c, k, i, t, m)
ON CONFLICT (enrollment_id, step_key) DO NOTHING
RETURNING enrollment_id, id""", binary=True)


def _insert_queued(d: Dispatcher, session: Session, insert, values: list[dict], now: datetime) -> dict[int, int]:
    """Inserts the queued messages (a step already queued for an enrollment is skipped); returns
    {enrollment_id: new message id} for those inserted."""
    if session.get_bind().dialect.name == "postgresql":
        columns = {"e": "enrollment_id", "s": "subscriber_id", "c": "campaign", "k": "step_key",
                   "i": "step_index", "t": "to_email", "m": "message_id"}
        params = {short: [v[name] for v in values] for short, name in columns.items()}
        return dict(_QUEUE_PG.all(flushed_connection(session), {**params, "now": now}))
    # executemany (SQLAlchemy batches it into multi-row INSERTs, "insertmanyvalues") rather than one
    # .values([...]) statement: that one is compiled anew for every batch size, ~80 ms a batch.
    return dict(session.execute(
        insert(Message.__table__)
        .on_conflict_do_nothing(index_elements=["enrollment_id", "step_key"])
        .returning(Message.__table__.c.enrollment_id, Message.__table__.c.id), values).all())


def _step_already_queued(d: Dispatcher, session: Session, enrollment: Enrollment, step: Step, now: datetime) -> None:
    """The step's message exists already (a race, or an operator moved the pointer back). If it is
    still in flight the enrollment waits for it; if it is finished the enrollment moves past it."""
    status, sent_at = session.execute(select(Message.status, Message.sent_at).where(
        Message.enrollment_id == enrollment.id, Message.step_key == step.key)).one()
    # A message already handed over (sent_at set) is finished for the sequence even when a provider
    # later reports it deferred: waiting on it would stall the reader for good.
    if status not in ("queued", "deferred", "sending") or sent_at is not None:
        enrollment.next_step = max(enrollment.next_step, step.index + 1)
        enrollment.next_due_at, enrollment.due_from = now, None


def _finish_enrollment(session: Session, enrollment: Enrollment, now: datetime, *, completed: bool,
                       summary: PassSummary) -> None:
    enrollment.status = "completed" if completed else "stopped"
    enrollment.stopped_reason = None if completed else "subscriber inactive"
    enrollment.next_due_at = None
    enrollment.updated_at = now
    summary.completed += completed
    events.record(session, type="enrollment_completed" if completed else "enrollment_stopped", now=now,
                  subscriber_id=enrollment.subscriber_id, detail=enrollment.campaign)
