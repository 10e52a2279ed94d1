"""Dispatch: one pass = queue what is due, claim it, send it, record what happened.

Record, then send, then record:
1. queue: every active enrollment whose next step is due gets its message row (unique per
   enrollment and step), and stops being due until that message is finished;
2. claim: due messages move to `sending` with a lease, in their own committed transaction
   (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite runs one writer at a time);
3. send outside any transaction; emails are handed to the transport one at a time, and at most
   `recheck_seconds` before each one the dispatcher re-checks that the reader is still subscribed and
   that this worker still holds the message; outcomes are written back every `flush_seconds`.

A worker killed mid-pass leaves `sending` rows whose lease expires; the next pass anywhere reclaims
them. The only email that can go out twice is one the dead worker had handed to the server but not
yet recorded, and that reclaim is written in the message's history.

Two clocks: `now` (the pass's clock, which `drip tick --now` sets) decides what is due and when a retry
is due; leases always run on the real clock, so a look-ahead tick can neither steal a live worker's
claim nor leave rows locked until the date it pretended to be.
"""
from __future__ import annotations

import email.utils
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, String, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.types import TypeEngine

from . import as_sent, delivery, events, live_edits, optin, retention, sending, sendlimits
from .campaigns import Campaign, Step, next_window_day, step_due
from .compose import ComposeJob, Composer, compose_confirmation, new_message_id
from .config import SendLimits
from .continuation import continue_enrollment, origin_why
from .db import DriverSQL, flushed_connection, one_of, utcnow
from .models import (
    CampaignState,
    DispatchPass,
    Enrollment,
    Message,
    Subscriber,
    Suppression,
    UTCDateTime,
)
from .suppression import email_hash, stop_for
from .transports.base import OutboundEmail, SendResult, Transport, TransportError

log = logging.getLogger(__name__)

# Issue 6: emails per prepare/compose/send round. With batches of 500 (DRIP_BATCH_SIZE): ~9 % less CPU per
# email than chunks of 100 in batches of 200 (fewer statements per email), measured with two workers.
CHUNK = 250
GIVE_UP_AFTER = timedelta(days=3)
PASS_HISTORY = timedelta(hours=1)  # dispatch_passes rows kept for the metrics


def _paused_campaigns():  # noqa: ANN202
    # Issue 3 (pause/resume): a paused campaign's enrollments are not queued and its messages are not
    # claimed; both wait exactly where they are until the operator resumes it.
    return select(CampaignState.campaign).where(CampaignState.paused.is_(True))


@dataclass
class PassSummary:
    queued: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    bounced: int = 0
    suppressed: int = 0
    reclaimed: int = 0
    completed: int = 0
    paused: int = 0  # 1 when sending is paused (issue 4: a provider refused our credentials)

    def line(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in vars(self).items())


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: int = 60
    cap_seconds: int = 6 * 3600
    max_attempts: int = 12
    give_up_after: timedelta = GIVE_UP_AFTER

    def delay(self, attempts: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Capped exponential backoff with +-20 % jitter; a server's Retry-After is a floor."""
        raw = min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempts - 1))
        jittered = raw * (rng or random).uniform(0.8, 1.2)
        return max(jittered, retry_after or 0.0)

    def exhausted(self, attempts: int, first_attempt_at: datetime | None, now: datetime) -> bool:
        return attempts >= self.max_attempts or (
            first_attempt_at is not None and now - first_attempt_at >= self.give_up_after)


def not_snoozed(subscriber_id, now: datetime):  # noqa: ANN001, ANN201
    """Issue 9: rows whose reader is not snoozed at `now` (a preference-page pause). Nothing is cancelled or
    shifted: queued mail and due steps simply wait, and when the snooze ends each enrollment resumes with
    its next step; the step after it is scheduled from that send, so there is no burst."""
    # Issue 6: a correlated NOT EXISTS, not `NOT IN (SELECT id ... WHERE snoozed_until > now)`: that form
    # made PostgreSQL hash-join the whole subscribers table into every queue and claim (245 ms per batch
    # with a million readers); this one is a lookup per candidate row, served by the small partial index
    # ix_subscribers_snoozed when the planner prefers an anti-join.
    # The subquery reads its own alias of the readers' table. With the plain table, a query that already
    # joins subscribers would make the subquery compare `subscribers.id` with itself (SQLAlchemy will not
    # correlate a subquery's only table away), asking "is anyone snoozed" instead of "is this reader".
    reader = aliased(Subscriber)
    snoozed = select(reader.id).where(reader.id == subscriber_id, reader.snoozed_until > now)
    return ~snoozed.exists()


def _local_midnight(now: datetime, tz_name: str) -> datetime:
    """The start (UTC) of `now`'s calendar day in `tz_name` (issue 5 daily cap)."""
    local = now.astimezone(ZoneInfo(tz_name))
    return datetime.combine(local.date(), dtime(0), tzinfo=local.tzinfo).astimezone(UTC)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


@dataclass
class Dispatcher:
    sessions: sessionmaker[Session]
    campaigns: Mapping[str, Campaign]
    composer: Composer
    transport_factory: Callable[[], Transport]
    unsubscribe_url: Callable[[str, str], str]  # (public_id, campaign) -> URL
    lease: timedelta = timedelta(seconds=300)
    batch_size: int = 500
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    worker_id: str = field(default_factory=worker_name)
    flush_seconds: float = 0.1
    recheck_seconds: float = 1.0
    real_clock: Callable[[], datetime] = utcnow
    limits: SendLimits | None = None  # per-domain hourly/daily caps and warm-up (issue 8)
    delivery_policy: delivery.Policy = field(default_factory=delivery.Policy)
    max_per_day: int = 0  # issue 5: most emails per reader per local day across campaigns; 0 = no cap
    # Issue 5 double opt-in: (public_id, campaign) -> confirm URL; None disables confirmation sending.
    confirm_url: Callable[[str, str], str] | None = None
    confirm_expiry: timedelta = timedelta(days=7)
    # Issue 7: set on SIGTERM; the pass finishes the batch it holds and claims no more, so a restart
    # never waits for the whole backlog and never leaves leased rows behind.
    stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    event_retention_days: int | None = None  # issue 7: see service/retention.py
    _pruned_at: float = field(default=float("-inf"), init=False, repr=False)
    _unfinished: set[int] = field(default_factory=set, init=False, repr=False)
    _lease_renewed: float = field(default=0.0, init=False, repr=False)
    _sent_this_pass: int = field(default=0, init=False, repr=False)
    _raw: dict[int, bytes | tuple[bytes, ...]] = field(default_factory=dict, init=False, repr=False)
    _recorder: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _in_flight: tuple[Future, PassSummary, tuple] | None = field(default=None, init=False, repr=False)
    _unwritten: tuple | None = field(default=None, init=False, repr=False)
    # Issue 6: write outcomes on a second thread (see _record_in_background); None = on PostgreSQL only
    background_writes: bool | None = None
    _reactivated: bool = field(default=False, init=False, repr=False)

    # -- the pass --------------------------------------------------------------------------------
    def run_pass(self, now: datetime | None = None) -> PassSummary:
        started, started_at = time.monotonic(), utcnow()
        try:
            return self._run_pass(now)
        finally:
            self._settle()
            self._record_pass(started_at, time.monotonic() - started)
            self._prune()

    def _prune(self) -> None:
        """Issue 7 retention: at most once an hour per worker, old events and stored emails go."""
        if not self.event_retention_days or time.monotonic() - self._pruned_at < 3600:
            return
        self._pruned_at = time.monotonic()
        try:
            with self.sessions() as session, session.begin():
                pruned = retention.prune(session, now=utcnow(), days=self.event_retention_days)
            if pruned.events or pruned.contents:
                log.info("retention: %d events and %d stored emails deleted", pruned.events, pruned.contents)
        except Exception:  # housekeeping must never fail a pass
            log.exception("retention pruning failed")

    def _record_pass(self, started_at: datetime, seconds: float) -> None:
        """Issue 3 (metrics): every pass's wall-clock duration goes to the database, so /metrics in any
        process reports every worker's passes. Old rows are pruned in the same transaction."""
        try:
            with self.sessions() as session, session.begin():
                session.add(DispatchPass(worker=self.worker_id[:80], started_at=started_at,
                                         duration_seconds=seconds, sent=self._sent_this_pass))
                session.execute(delete(DispatchPass).where(DispatchPass.started_at < started_at - PASS_HISTORY))
        except Exception:  # a metric must never fail a pass that has already sent its emails
            log.exception("could not record the pass duration")

    def _run_pass(self, now: datetime | None) -> PassSummary:
        clock: Callable[[], datetime] = (lambda: now) if now is not None else utcnow
        summary = PassSummary()
        self._sent_this_pass = 0
        if not self._reactivated:  # issue 5: once per loaded campaign set, appended steps reach finished readers
            with self.sessions() as session, session.begin():
                live_edits.reactivate_grown(session, self.campaigns, clock())
            self._reactivated = True
        with self.sessions() as session:
            paused_now = sending.paused_reason(session) is not None
        if not paused_now:  # a provider refused our key: confirmations wait like everything else
            self._send_confirmations(clock())  # issue 5: double opt-in, outside the message log
        while (n := self.queue_due(clock(), summary)) >= self.batch_size:
            pass
        del n
        # Issue 4: messages a provider keeps deferring fail at a deadline; a paused service claims nothing.
        with self.sessions() as session, session.begin():
            summary.failed += delivery.expire_deferred(session, now=clock(), policy=self.delivery_policy)
            reason = sending.paused_reason(session)
        if reason:
            log.error("sending is paused (%s); nothing claimed. Run `drip sending resume` once fixed.", reason)
            summary.paused = 1
            return summary
        transport: Transport | None = None
        try:
            while not summary.paused and not self.stopping.is_set() and (claimed := self.claim(clock(), summary)):
                if transport is None:
                    transport = self.transport_factory()
                self.send_claimed(claimed, transport, clock, summary)
        finally:
            if transport is not None:
                transport.close()
        return summary

    # -- 1. queue --------------------------------------------------------------------------------
    def queue_due(self, now: datetime, summary: PassSummary) -> int:
        """Queue the next step of up to `batch_size` due enrollments. Issue 6: the common case (campaign
        loaded, reader active, a step to send) is written set-based: one multi-row INSERT of the messages,
        one UPDATE of the enrollments, one INSERT of the events per batch, instead of three statements and
        an ORM flush per reader (it ran at ~160 readers/s, so a 100k backlog waited minutes to start)."""
        with self.sessions() as session, session.begin():
            rows = session.execute(
                select(Enrollment.id, Enrollment.subscriber_id, Enrollment.campaign, Enrollment.next_step,
                       Subscriber.status.label("subscriber_status"), Subscriber.email)
                .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
                .where(Enrollment.status == "active", Enrollment.next_due_at <= now,
                       Enrollment.campaign.not_in(_paused_campaigns()))
                .where(not_snoozed(Enrollment.subscriber_id, now))  # a snoozed reader's steps wait
                .order_by(Enrollment.next_due_at, Enrollment.id)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True, of=Enrollment)
            ).all()
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            had = live_edits.sent_keys(session, [row.id for row in rows])  # issue 5: place by step keys
            wanted: dict[int, tuple[Step, Campaign]] = {}
            values: list[dict] = []
            for row in rows:  # plain rows; the rare cases below load the ORM objects (already locked)
                campaign = self.campaigns.get(row.campaign)
                if campaign is None:
                    log.warning("enrollment %s: campaign %r is not loaded; left waiting", row.id, row.campaign)
                    session.get_one(Enrollment, row.id).next_due_at = now + timedelta(hours=1)
                    continue
                step = live_edits.next_step(campaign, row, had[row.id])  # issue 5: safe edits
                if step is None or row.subscriber_status != "active":
                    enrollment = session.get_one(Enrollment, row.id)
                    self._finish_enrollment(session, enrollment, now, completed=step is None, summary=summary)
                    if step is None and row.subscriber_status == "active":  # issue 5
                        self._continue_into(session, enrollment, session.get_one(Subscriber, row.subscriber_id),
                                            campaign, now)
                    continue
                wanted[row.id] = (step, campaign)
                values.append(dict(
                    enrollment_id=row.id, subscriber_id=row.subscriber_id, campaign=campaign.key,
                    step_key=step.key, step_index=step.index, to_email=row.email, status="queued",
                    attempts=0, next_attempt_at=now, created_at=now, updated_at=now,
                    message_id=new_message_id(self.composer.from_header(campaign), row.id, secrets.token_hex(10))))
            if not values:
                return len(rows)
            inserted = self._insert_queued(session, insert, values, now)
            if inserted:
                enrollments = Enrollment.__table__
                session.execute(update(enrollments).where(self._one_of(enrollments.c.id, inserted))
                                .values(next_due_at=None, updated_at=now))
            queued_events = []
            subscriber_of = {row.id: row.subscriber_id for row in rows}
            for enrollment_id, (step, campaign) in wanted.items():
                message_pk = inserted.get(enrollment_id)
                if message_pk is None:  # the step's message exists already
                    enrollment = session.get_one(Enrollment, enrollment_id)
                    enrollment.next_due_at = None
                    enrollment.updated_at = now
                    self._step_already_queued(session, enrollment, step, now)
                    continue
                queued_events.append(dict(type="queued", created_at=now, subscriber_id=subscriber_of[enrollment_id],
                                          message_id=message_pk, detail=f"{campaign.key}/{step.key} queued"))
            summary.queued += len(queued_events)
            events.record_many(session, queued_events)
            return len(rows)

    # PostgreSQL: the batch's messages as one array per column, unnested (issue 6). The same short statement
    # for every batch: SQLAlchemy's multi-row INSERT for 200 messages was 80 KB of SQL with 2,400
    # parameters, built and then parsed by psycopg anew for every batch (~35 us of CPU per email).
    _QUEUE_PG = DriverSQL("""INSERT INTO messages (enrollment_id, subscriber_id, campaign, step_key, step_index,
    to_email, status, attempts, next_attempt_at, created_at, updated_at, message_id)
SELECT e, s, c, k, i, t, 'queued', 0, :now, :now, :now, m
FROM unnest(CAST(:e AS BIGINT[]), CAST(:s AS BIGINT[]), CAST(:c AS TEXT[]), CAST(:k AS TEXT[]),
            CAST(:i AS INTEGER[]), CAST(:t AS TEXT[]), CAST(:m AS TEXT[])) AS batch (e, s, c, k, i, t, m)
ON CONFLICT (enrollment_id, step_key) DO NOTHING
RETURNING enrollment_id, id""", binary=True)

    def _insert_queued(self, session: Session, insert, values: list[dict], now: datetime) -> dict[int, int]:  # noqa: ANN001
        """Inserts the queued messages (a step already queued for an enrollment is skipped); returns
        {enrollment_id: new message id} for those inserted."""
        if session.get_bind().dialect.name == "postgresql":
            columns = {"e": "enrollment_id", "s": "subscriber_id", "c": "campaign", "k": "step_key",
                       "i": "step_index", "t": "to_email", "m": "message_id"}
            params = {short: [v[name] for v in values] for short, name in columns.items()}
            return dict(self._QUEUE_PG.all(flushed_connection(session), {**params, "now": now}))
        # executemany (SQLAlchemy batches it into multi-row INSERTs, "insertmanyvalues") rather than one
        # .values([...]) statement: that one is compiled anew for every batch size, ~80 ms a batch.
        return dict(session.execute(
            insert(Message.__table__)
            .on_conflict_do_nothing(index_elements=["enrollment_id", "step_key"])
            .returning(Message.__table__.c.enrollment_id, Message.__table__.c.id), values).all())

    def _step_already_queued(self, session: Session, enrollment: Enrollment, step: Step, now: datetime) -> None:
        """The step's message exists already (a race, or an operator moved the pointer back). If it is
        still in flight the enrollment waits for it; if it is finished the enrollment moves past it."""
        status, sent_at = session.execute(select(Message.status, Message.sent_at).where(
            Message.enrollment_id == enrollment.id, Message.step_key == step.key)).one()
        # A message already handed over (sent_at set) is finished for the sequence even when a provider
        # later reports it deferred: waiting on it would stall the reader for good.
        if status not in ("queued", "deferred", "sending") or sent_at is not None:
            enrollment.next_step = max(enrollment.next_step, step.index + 1)
            enrollment.next_due_at = now

    def _finish_enrollment(self, session: Session, enrollment: Enrollment, now: datetime, *, completed: bool,
                           summary: PassSummary) -> None:
        enrollment.status = "completed" if completed else "stopped"
        enrollment.stopped_reason = None if completed else "subscriber inactive"
        enrollment.next_due_at = None
        enrollment.updated_at = now
        summary.completed += completed
        events.record(session, type="enrollment_completed" if completed else "enrollment_stopped", now=now,
                      subscriber_id=enrollment.subscriber_id, detail=enrollment.campaign)

    # -- 2. claim --------------------------------------------------------------------------------
    def claim(self, now: datetime, summary: PassSummary) -> list[int]:
        """Lease up to `batch_size` due messages to this worker. Issue 6: plain rows, one UPDATE for the
        batch and one INSERT of its events (the ORM cost ~60 us per message here)."""
        real_now = self.real_clock()
        with self.sessions() as session, session.begin():
            # Issue 6: two queries. On PostgreSQL each is an index walk in (next_attempt_at, id) order that
            # stops after the batch; one query with both conditions OR-ed read every due message and sorted
            # them for every batch: 5.8 ms a claim with 4,000 due, and it grew with the backlog (200,000
            # queued for one morning's send). Expired leases (a worker died mid-batch) go first.
            full = self._campaigns_at_limit(session, now) if self.limits is not None else []
            rows = session.execute(self._claim_query(
                and_(Message.status == "sending", Message.lease_until < real_now), now, full, self.batch_size)).all()
            if len(rows) < self.batch_size:
                rows += session.execute(self._claim_query(
                    and_(Message.status.in_(("queued", "deferred")), Message.next_attempt_at <= now), now, full,
                    self.batch_size - len(rows))).all()
            candidates = self._frequency_cap(session, rows, now)  # issue 5
            messages = self._within_limits(session, candidates, now)
            if not messages:
                return []
            history: list[dict] = []
            for m in messages:
                events.check_transition(m.id, m.status, "sending")
                if m.status == "sending":
                    summary.reclaimed += 1
                    history.append(dict(type="reclaimed", created_at=now, subscriber_id=m.subscriber_id,
                                        message_id=m.id, detail=f"lease of {m.claimed_by} expired; "
                                                                "that attempt's outcome is unknown"))
                history.append(dict(type="attempt", created_at=now, subscriber_id=m.subscriber_id, message_id=m.id,
                                    detail=f"attempt {m.attempts + 1} by {self.worker_id}"))
            table = Message.__table__
            session.execute(
                update(table).where(self._one_of(table.c.id, [m.id for m in messages]))
                .values(status="sending", attempts=table.c.attempts + 1, lease_until=real_now + self.lease,
                        claimed_by=self.worker_id, updated_at=now,
                        first_attempt_at=func.coalesce(table.c.first_attempt_at,
                                                       bindparam("claim_now", now, type_=UTCDateTime()))))
            events.record_many(session, history)
            return [m.id for m in messages]

    def _claim_query(self, due, now: datetime, full: list[str], limit: int):  # noqa: ANN001, ANN202
        query = (
            select(Message.id, Message.status, Message.attempts, Message.claimed_by, Message.subscriber_id,
                   Message.campaign, Message.step_key, Message.step_index)
            .where(due, Message.campaign.not_in(_paused_campaigns()))
            .where(not_snoozed(Message.subscriber_id, now))  # issue 9: held while snoozed
            .order_by(Message.next_attempt_at, Message.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if full:  # issue 8: domains at their limit wait; the others still go
            query = query.where(Message.campaign.notin_(full))
        return query

    # -- per-reader daily cap (issue 5) ----------------------------------------------------------
    def _frequency_cap(self, session: Session, messages: Sequence[Row], now: datetime) -> list[Row]:
        """The claimable messages minus those over a reader's daily cap. A reader's local day (their zone,
        else the campaign's) holds at most `max_per_day` emails across all campaigns, counting those sent
        or being sent that day; the first step of a campaign (the welcome the reader just asked for) is
        exempt and not counted. A held message stays queued with `next_attempt_at` moved to the next
        allowed day at its send hour; held messages keep their (next_attempt_at, id) order, so they go
        one per day in the order they were queued. Reclaimed `sending` rows are never held."""
        capped = [m for m in messages if m.status != "sending" and m.step_index != 0]
        if not self.max_per_day or not capped:
            return list(messages)
        zones = dict(session.execute(select(Subscriber.id, Subscriber.timezone)
                                     .where(Subscriber.id.in_({m.subscriber_id for m in capped}))).all())
        recent = self._recent_sends(session, {m.subscriber_id for m in capped}, now)
        held: dict[int, datetime] = {}
        history: list[dict] = []
        room: dict[int, int] = {}
        for m in capped:  # in claim order: (next_attempt_at, id)
            campaign = self.campaigns.get(m.campaign)
            if campaign is None:
                continue
            tz = zones.get(m.subscriber_id) or campaign.timezone
            if m.subscriber_id not in room:
                midnight = _local_midnight(now, tz)
                room[m.subscriber_id] = self.max_per_day - sum(t >= midnight for t in recent.get(m.subscriber_id, ()))
            if room[m.subscriber_id] > 0:
                room[m.subscriber_id] -= 1
                continue
            held[m.id] = later = next_window_day(campaign, campaign.step_by_key(m.step_key), after=now,
                                                 reader_timezone=tz)
            history.append(dict(type="held", created_at=now, subscriber_id=m.subscriber_id, message_id=m.id,
                                detail=f"daily cap of {self.max_per_day} reached; "
                                       f"next try {later:%Y-%m-%d %H:%M} UTC"))
        if held:
            table = Message.__table__
            session.execute(update(table).where(table.c.id == bindparam("held_id"))
                            .values(next_attempt_at=bindparam("later")),
                            [{"held_id": i, "later": t} for i, t in held.items()])
            events.record_many(session, history)
        return [m for m in messages if m.id not in held]

    def _recent_sends(self, session: Session, subscriber_ids: set[int], now: datetime) -> dict[int, list[datetime]]:
        """When each reader's non-welcome emails of the last 30 hours went (or, in flight, were claimed):
        one query for the batch; each reader's local midnight is applied in Python."""
        since = now - timedelta(hours=30)
        out: dict[int, list[datetime]] = {}
        for sid, sent_at, updated_at, status in session.execute(
            select(Message.subscriber_id, Message.sent_at, Message.updated_at, Message.status).where(
                Message.subscriber_id.in_(subscriber_ids), Message.step_index != 0,
                or_(Message.sent_at >= since, and_(Message.status == "sending", Message.updated_at >= since)))
        ):
            out.setdefault(sid, []).append(sent_at if sent_at is not None and status != "sending" else updated_at)
        return out

    # -- send limits (issue 8) -------------------------------------------------------------------
    def _sending_domain(self, campaign_key: str) -> str | None:
        campaign = self.campaigns.get(campaign_key)
        if campaign is None:
            return None
        return email.utils.parseaddr(self.composer.from_header(campaign))[1].rpartition("@")[2].lower() or None

    def _campaigns_at_limit(self, session: Session, now: datetime) -> list[str]:
        assert self.limits is not None
        return [key for key in self.campaigns if (domain := self._sending_domain(key)) is not None
                and sendlimits.remaining(session, domain, self.limits, now) == 0]

    def _within_limits(self, session: Session, messages: Sequence[Message], now: datetime) -> list[Message]:
        """The claimable messages, in order, that their domain's hourly/daily allowance still covers; the
        allowance is taken now. The rest are left exactly as they were: queued, no attempt counted."""
        if self.limits is None:
            return list(messages)
        by_domain: dict[str | None, list[Message]] = {}
        for m in messages:
            by_domain.setdefault(self._sending_domain(m.campaign), []).append(m)
        keep: set[int] = set()
        for domain, group in by_domain.items():
            granted = len(group) if domain is None else sendlimits.reserve(session, domain, len(group),
                                                                           self.limits, now)
            keep.update(m.id for m in group[:granted])
        return [m for m in messages if m.id in keep]

    # -- 3. send and record ----------------------------------------------------------------------
    def send_claimed(self, ids: Sequence[int], transport: Transport, clock: Callable[[], datetime],
                     summary: PassSummary) -> None:
        self._unfinished = set(ids)
        self._lease_renewed = time.monotonic()
        broken: TransportError | None = None
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            if broken is not None and broken.auth_failed:
                self.release(chunk, clock())
                continue
            if broken is not None:
                failed = SendResult(ok=False, error=str(broken), retry_after=broken.retry_after, transport=True)
                self.record(clock(), [(i, failed) for i in chunk], summary)
                continue
            jobs = self.prepare(chunk, clock(), summary)
            broken = self.send_chunk(jobs, transport, clock, summary)
        self._wait_recorded(summary)
        self._unfinished = set()
        if broken is not None and broken.auth_failed:
            summary.paused = 1

    def keep_lease(self) -> None:
        """Renew the lease of every message this worker still holds, well before it can expire, so no
        other worker takes over a message that is still being sent. Messages whose lease was lost
        anyway (the database was unreachable for a whole lease) are dropped from this pass."""
        if self._unfinished and time.monotonic() - self._lease_renewed >= self.lease.total_seconds() / 3:
            held = self.renew_lease(sorted(self._unfinished))
            lost = self._unfinished - held
            if lost:
                log.warning("lost the lease of %d messages; another worker will send them", len(lost))
            self._unfinished = held
            self._lease_renewed = time.monotonic()

    def prepare(self, ids: Sequence[int], now: datetime, summary: PassSummary) -> list[ComposeJob]:
        """Drop readers no longer wanted and compose-ready jobs for the rest."""
        jobs: list[ComposeJob] = []
        with self.sessions() as session, session.begin():
            gone: list[int] = []  # campaign or step no longer exists: failed (ORM, rare)
            for row in self._wanted(session, ids, now, summary):
                campaign = self.campaigns.get(row.campaign)
                # issue 5: found by key, so a step that moved in the file since it was queued still goes
                step = campaign.step_by_key(row.step_key) if campaign else None
                if campaign is None or step is None:
                    gone.append(row.id)
                    continue
                jobs.append(ComposeJob(
                    message_pk=row.id, message_id=row.message_id or "", campaign=campaign, step=step,
                    to_email=row.to_email, name=row.name,
                    unsubscribe_url=self.unsubscribe_url(row.public_id, campaign.key), now=now,
                    public_id=row.public_id,  # issue 9: the footer's preference link
                    why=origin_why(row, campaign, self.campaigns),  # issue 5: continued enrollments
                ))
            for message, subscriber, enrollment in self._load(session, gone):
                campaign = self.campaigns.get(message.campaign)
                self._unfinished.discard(message.id)
                events.transition(session, message, "failed", now=now,
                                  detail=f"campaign step {message.campaign}/{message.step_key} no longer exists")
                self._advance(session, enrollment, subscriber, campaign, message, now)
                summary.failed += 1
        return jobs

    def recheck(self, ids: Sequence[int], now: datetime, summary: PassSummary) -> set[int]:
        """Of `ids`, those still held by this worker and still wanted; the unwanted become `suppressed`."""
        with self.sessions() as session, session.begin():
            return {row.id for row in self._wanted(session, ids, now, summary)}

    def _wanted(self, session: Session, ids: Sequence[int], now: datetime, summary: PassSummary) -> list[Row]:
        """The rows of `ids` this worker still holds and whose reader still wants them, in id order. Those
        another worker took over are forgotten; those whose reader left (unsubscribed, bounced, stopped,
        suppressed) become `suppressed` here. Issue 6: two queries and one UPDATE for the whole chunk (the
        suppression list was queried once per reader)."""
        if not ids:
            return []
        rows = session.execute(
            select(Message.id, Message.status, Message.claimed_by, Message.campaign, Message.step_key,
                   Message.message_id, Message.to_email, Message.subscriber_id, Subscriber.name,
                   Subscriber.public_id, Subscriber.email_key, Subscriber.status.label("subscriber_status"),
                   Enrollment.status.label("enrollment_status"), Enrollment.origin_campaign)
            .join(Subscriber, Subscriber.id == Message.subscriber_id)
            .join(Enrollment, Enrollment.id == Message.enrollment_id)
            .where(self._one_of(Message.id, ids))
            .order_by(Message.id)
        ).all()
        hashes = {row.id: email_hash(row.email_key) for row in rows}
        listed = set(session.scalars(select(Suppression.email_hash)
                                     .where(self._one_of(Suppression.email_hash, set(hashes.values()), String))))
        keep: list[Row] = []
        dropped: list[dict] = []
        for row in rows:
            if row.status != "sending" or row.claimed_by != self.worker_id:
                self._unfinished.discard(row.id)  # another worker holds it now
                continue
            if row.subscriber_status != "active":
                reason = f"subscriber is {row.subscriber_status}"
            elif row.enrollment_status == "stopped":  # "completed" still sends: an operator may retry its last step
                reason = f"enrollment is {row.enrollment_status}"
            elif hashes[row.id] in listed:
                reason = "address is on the suppression list"
            else:
                keep.append(row)
                continue
            events.check_transition(row.id, row.status, "suppressed")
            self._unfinished.discard(row.id)
            dropped.append(dict(type="suppressed", created_at=now, subscriber_id=row.subscriber_id,
                                message_id=row.id, detail=reason))
        if dropped:
            table = Message.__table__
            session.execute(update(table).where(table.c.id.in_([d["message_id"] for d in dropped]))
                            .values(status="suppressed", updated_at=now, lease_until=None))
            events.record_many(session, dropped)
            summary.suppressed += len(dropped)
        return keep

    def _load(self, session: Session, ids: Sequence[int]):  # noqa: ANN202
        if not ids:
            return []
        return session.execute(
            select(Message, Subscriber, Enrollment)
            .join(Subscriber, Subscriber.id == Message.subscriber_id)
            .join(Enrollment, Enrollment.id == Message.enrollment_id)
            .where(Message.id.in_(ids))
            .order_by(Message.id)
        ).all()

    def send_chunk(self, jobs: list[ComposeJob], transport: Transport, clock: Callable[[], datetime],
                   summary: PassSummary) -> TransportError | None:
        """Compose and send `jobs`, recording outcomes every `flush_seconds`. Issue 6: each email is
        composed as the transport asks for it, so a pipelining transport composes the next one while
        the server is still answering the last (see `_feed`)."""
        outcomes: list[tuple[int, SendResult]] = []  # the feed adds compose failures here too
        subjects: dict[int, str] = {}
        self._raw = {}  # issue 3: kept "as sent" by record()
        handed: list[OutboundEmail] = []  # result n belongs to handed[n]
        results = transport.send(self._feed(jobs, handed, outcomes, subjects, clock, summary))
        last_flush, n = time.monotonic(), 0

        def flush(*, last: bool = False) -> None:
            if self._background and not last:
                self._record_in_background(clock(), outcomes, summary, subjects)
            else:
                self.record(clock(), outcomes, summary, subjects)
            outcomes.clear()

        def unanswered() -> list[int]:
            answered = {item.message_pk for item in handed[:n]} | {pk for pk, _result in outcomes}
            return [job.message_pk for job in jobs
                    if job.message_pk not in answered and job.message_pk in self._unfinished]

        try:
            for result in results:
                outcomes.append((handed[n].message_pk, result))
                n += 1
                self.keep_lease()
                if time.monotonic() - last_flush >= self.flush_seconds:
                    flush()
                    last_flush = time.monotonic()
            # Inside the try: this flush is where an earlier background write's failure may surface.
            flush()  # written in the background on PostgreSQL; send_claimed waits for it before it returns
        except SQLAlchemyError:
            # The database failed mid-chunk (a re-check, a lease renewal or a write of outcomes): write down
            # what the server already answered, if the database lets us, so those emails are not sent again
            # after the lease.
            log.exception("database error while sending; recording the %d answers received", len(outcomes))
            try:
                try:
                    self._wait_recorded(summary)
                except SQLAlchemyError:
                    pass
                self._rewrite_failed(summary)
                flush(last=True)
            except SQLAlchemyError:
                self._unwritten = None
                log.error("could not record them either; they will be reclaimed after the lease")
            raise
        except TransportError as exc:
            # An earlier background write that failed is written once more before these answers, which
            # would otherwise be lost with it (the emails then sent again after their lease).
            try:
                self._wait_recorded(summary)
            except SQLAlchemyError:
                self._rewrite_failed(summary)
            if exc.auth_failed:  # issue 4: bad credentials pause sending; no message is failed or charged
                rest = unanswered()
                flush(last=True)
                self.release(rest, clock(), pause_reason=str(exc))
                return exc
            log.warning("transport unavailable: %s", exc)
            failed = SendResult(ok=False, error=str(exc), retry_after=exc.retry_after, transport=True)
            outcomes.extend((pk, failed) for pk in unanswered())
            flush(last=True)
            return exc
        return None

    def _feed(self, jobs: list[ComposeJob], handed: list[OutboundEmail], outcomes: list[tuple[int, SendResult]],
              subjects: dict[int, str], clock: Callable[[], datetime], summary: PassSummary) -> Iterator[OutboundEmail]:
        """Composes and hands emails to the transport one by one. When more than `recheck_seconds` have
        passed since the last check, the rest of the chunk is re-checked first: an unsubscribe that arrives
        while a slow relay works through the chunk still stops the emails not yet handed over."""
        checked = time.monotonic()
        wanted = {job.message_pk for job in jobs}
        for i, job in enumerate(jobs):
            if time.monotonic() - checked >= self.recheck_seconds:
                wanted = self.recheck([j.message_pk for j in jobs[i:]], clock(), summary)
                checked = time.monotonic()
            if job.message_pk not in wanted or job.message_pk not in self._unfinished:
                continue
            try:
                item = self.composer.compose(job)
            except Exception as exc:  # a template bug fails this message loudly, not the pass
                log.exception("cannot compose message %s", job.message_pk)
                outcomes.append((job.message_pk, SendResult(ok=False, permanent=True,
                                                            error=f"compose failed: {exc}")))
                continue
            subjects[item.message_pk] = item.subject
            self._raw[item.message_pk] = item.layout or item.raw  # as_sent.store takes either
            handed.append(item)
            yield item

    def release(self, ids: Sequence[int], now: datetime, *, pause_reason: str | None = None) -> None:
        """Hand claimed messages back untouched (attempt not counted, due now) and optionally pause sending.
        Used when the provider refused our credentials: the messages are fine, our configuration is not."""
        self._unfinished.difference_update(ids)
        with self.sessions() as session, session.begin():
            if pause_reason:
                sending.pause(session, pause_reason, now=now)
            for m in session.scalars(select(Message).where(Message.id.in_(ids)).with_for_update()):
                if m.status != "sending" or m.claimed_by != self.worker_id:
                    continue
                why = f"sending paused: {pause_reason}" if pause_reason else "sending paused"
                events.transition(session, m, "deferred", now=now, detail=f"{why}; attempt not counted")
                m.attempts = max(0, m.attempts - 1)
                m.first_attempt_at = m.first_attempt_at if m.attempts else None
                m.next_attempt_at, m.lease_until, m.claimed_by = now, None, None

    def renew_lease(self, ids: Sequence[int]) -> set[int]:
        """Extends this worker's lease on `ids`; returns the ids it still holds."""
        with self.sessions() as session, session.begin():
            held = session.scalars(
                update(Message)
                .where(Message.id.in_(ids), Message.status == "sending", Message.claimed_by == self.worker_id)
                .values(lease_until=self.real_clock() + self.lease)
                .returning(Message.id)
            ).all()
        return set(held)

    def record(self, now: datetime, outcomes: Sequence[tuple[int, SendResult]], summary: PassSummary,
               subjects: Mapping[int, str] | None = None) -> None:
        """Write the outcomes of messages this worker holds. Issue 6: the common outcome (accepted, and the
        enrollment moves on to a next step) is written set-based: one UPDATE of the messages, one of the
        enrollments, one INSERT of the events and one of the "as sent" copies per flush. Every other
        outcome (bounce, deferral, failure, the last step of a campaign) goes through `_apply` row by row."""
        if not outcomes:
            return
        self._wait_recorded(summary)  # in order: an earlier flush still being written goes first
        by_id, raws = self._take(outcomes)
        delta = PassSummary()
        self._write_outcomes(now, by_id, raws, dict(subjects or {}), delta)
        self._merge(summary, delta)

    def _take(self, outcomes: Sequence[tuple[int, SendResult]]) -> tuple[dict[int, SendResult], dict[int, bytes]]:
        """The dispatcher's own bookkeeping for outcomes about to be written (always in its thread)."""
        by_id = dict(outcomes)
        self._unfinished.difference_update(by_id)
        return by_id, {pk: raw for pk in by_id if (raw := self._raw.pop(pk, None)) is not None}

    def _merge(self, summary: PassSummary, delta: PassSummary) -> None:
        for key, value in vars(delta).items():
            setattr(summary, key, getattr(summary, key) + value)
        self._sent_this_pass += delta.sent

    def _record_in_background(self, now: datetime, outcomes: Sequence[tuple[int, SendResult]],
                              summary: PassSummary, subjects: Mapping[int, str]) -> None:
        """Issue 6: on PostgreSQL the flushes of a chunk are written by a second thread while this one goes
        on composing and sending: waiting for the database (~half of a worker's time, PostgreSQL doing
        its work on the other core) no longer adds to the time per email. At most one flush is in flight;
        the next waits for it, so outcomes are written in order and at most two flush intervals of answers
        are unrecorded at any moment (they are the emails a killed worker could send twice). An error in
        the write is raised here, in the dispatcher's thread, at the next flush or at the end of the chunk."""
        if not outcomes:
            return
        self._wait_recorded(summary)
        by_id, raws = self._take(outcomes)
        delta = PassSummary()
        if self._recorder is None:
            self._recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drip-record")
        mine = {pk: subjects[pk] for pk in by_id if pk in subjects}
        self._in_flight = (self._recorder.submit(self._write_outcomes, now, by_id, raws, mine, delta), delta,
                           (now, by_id, raws, mine))

    def _wait_recorded(self, summary: PassSummary) -> None:
        if self._in_flight is not None:
            future, delta, batch = self._in_flight
            self._in_flight = None
            try:
                future.result()  # re-raises the writer's exception in this thread
            except SQLAlchemyError:
                self._unwritten = batch  # send_chunk tries once more, then lets the lease decide
                raise
            self._merge(summary, delta)

    def _settle(self) -> None:
        """A pass that ends by an exception still waits for its background write (normally the chunk
        has already waited for it)."""
        try:
            self._wait_recorded(PassSummary())
        except Exception:
            log.exception("writing outcomes failed")
        try:  # a failed write no chunk has tried again (the last one of the pass): once, as send_chunk does
            self._rewrite_failed(PassSummary())
        except Exception:
            log.exception("writing outcomes failed; those messages will be reclaimed after their lease")
        self._unwritten = None

    def _rewrite_failed(self, summary: PassSummary) -> None:
        """After a database error: the outcomes of a background write that failed, written once more."""
        if self._unwritten is not None:
            now, by_id, raws, subjects = self._unwritten
            self._unwritten = None
            delta = PassSummary()
            self._write_outcomes(now, by_id, raws, subjects, delta)
            self._merge(summary, delta)

    def _one_of(self, column, values: Iterable, element_type: type[TypeEngine] = BigInteger):  # noqa: ANN001, ANN202
        return one_of(self.sessions.kw["bind"].dialect.name, column, values, element_type)

    @property
    def _background(self) -> bool:
        if self.background_writes is None:
            self.background_writes = self.sessions.kw["bind"].dialect.name == "postgresql"
        return self.background_writes

    def _write_outcomes(self, now: datetime, by_id: Mapping[int, SendResult], raws: Mapping[int, bytes],
                        subjects: Mapping[int, str], summary: PassSummary) -> None:
        """Writes outcomes in one transaction. Touches only its arguments and the database, so it may run
        on the recorder thread; `summary` is that write's own tally, merged by the dispatcher's thread."""
        with self.sessions() as session, session.begin():
            rows = session.execute(
                select(Message.id, Message.status, Message.claimed_by, Message.campaign, Message.step_key,
                       Message.step_index, Message.subscriber_id, Message.enrollment_id,
                       Enrollment.status.label("enrollment_status"), Enrollment.next_step, Subscriber.timezone)
                .join(Subscriber, Subscriber.id == Message.subscriber_id)
                .join(Enrollment, Enrollment.id == Message.enrollment_id)
                .where(self._one_of(Message.id, by_id))
                .with_for_update(of=Message)
            ).all()
            contents: list[dict] = []
            sent: list[dict] = []
            moved: list[dict] = []
            history: list[dict] = []
            slow: list[int] = []
            for row in rows:
                raw = raws.get(row.id)
                if row.status != "sending" or row.claimed_by != self.worker_id:
                    log.warning("message %s was reclaimed by %s before our outcome was recorded", row.id,
                                row.claimed_by)
                    continue
                result = by_id[row.id]
                if raw is not None and not result.transport:  # never handed over: nothing "as sent"
                    # Issue 3: the bytes handed to the transport, for the operator's "as sent" view.
                    contents.append({"c_id": row.id, "raw": raw, "created_at": now})
                nxt = self._next_after(row) if result.ok and row.enrollment_status == "active" else None
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
            as_sent.store(session, contents, now)  # issue 3's "as sent" copies, one statement per flush
            if sent:
                self._write_sent(session, sent, moved, now)
                events.record_many(session, history)
                summary.sent += len(sent)
            for message, subscriber, enrollment in self._load(session, slow):
                if message.id in subjects:
                    message.subject = subjects[message.id]
                self._apply(session, message, subscriber, enrollment, by_id[message.id], now, summary)

    def _next_after(self, row: Row) -> tuple[Campaign, Step] | None:
        """For an accepted message: its campaign and the step its enrollment moves to, or None when there
        is no next step (completion and continuation go through `_advance`)."""
        campaign = self.campaigns.get(row.campaign)
        if campaign is None:
            return None
        here = campaign.step_by_key(row.step_key)  # issue 5: the step's place in the current file
        nxt = campaign.step(here.index + 1 if here is not None else max(row.next_step, row.step_index + 1))
        return (campaign, nxt) if nxt is not None else None

    # PostgreSQL (issue 6): a flush's accepted messages and their enrollments (and, in as_sent.py, their
    # "as sent" copies) as one statement each over unnested arrays. executemany ran one statement per
    # row: ~30 us of the worker's CPU per row in SQLAlchemy and psycopg (three rows per email), and an
    # executor start per row on the server. Naive datetimes are refused by DriverSQL, as UTCDateTime does.
    _SENT_PG = DriverSQL("""UPDATE messages AS m SET status = 'sent', updated_at = :now, sent_at = :now,
    lease_until = NULL, provider_message_id = v.provider_id, last_error = v.error, subject = coalesce(v.subj, m.subject)
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:subjects AS TEXT[]), CAST(:provider_ids AS TEXT[]),
            CAST(:errors AS TEXT[])) AS v (id, subj, provider_id, error)
WHERE m.id = v.id""", binary=True)
    _MOVED_PG = DriverSQL("""UPDATE enrollments AS e SET next_step = v.next_step, next_step_key = v.next_key,
    next_due_at = v.due, last_sent_at = :now, updated_at = :now
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:steps AS INTEGER[]), CAST(:keys AS TEXT[]),
            CAST(:dues AS TIMESTAMPTZ[])) AS v (id, next_step, next_key, due)
WHERE e.id = v.id AND e.status = 'active'""", binary=True)

    def _write_sent(self, session: Session, sent: list[dict], moved: list[dict], now: datetime) -> None:
        """The common outcome, set-based: the messages become `sent`, their enrollments move on."""
        if session.get_bind().dialect.name == "postgresql":
            # An enrollment listed twice (two of its messages in one flush: an operator's retry) is moved
            # once, by its last row, as the rows applied in order would leave it.
            last = {row["e_id"]: row for row in moved}
            conn = flushed_connection(session)
            self._SENT_PG.all(conn, {
                "now": now, "ids": [r["m_id"] for r in sent], "subjects": [r["subj"] for r in sent],
                "provider_ids": [r["provider_id"] for r in sent], "errors": [r["error"] for r in sent]})
            self._MOVED_PG.all(conn, {
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
                    next_due_at=bindparam("due", type_=UTCDateTime()), last_sent_at=now, updated_at=now),
            moved)

    def _apply(self, session: Session, message: Message, subscriber: Subscriber, enrollment: Enrollment,
               result: SendResult, now: datetime, summary: PassSummary) -> None:
        message.lease_until = None
        message.last_error = result.error or None
        if result.ok:
            message.sent_at = now
            message.provider_message_id = result.provider_id
            events.transition(session, message, "sent", now=now,
                              detail=result.error or f"accepted ({result.code or 'ok'})")
            summary.sent += 1
            self._advance(session, enrollment, subscriber, self.campaigns.get(message.campaign), message, now)
        elif result.permanent and result.suppress:
            events.transition(session, message, "bounced", now=now, detail=result.error)
            summary.suppressed += stop_for(session, subscriber, "hard_bounce", now=now, detail=result.error)
            summary.bounced += 1
        elif result.transport:
            # Not the reader's fault: the attempt does not count and the message is never given up.
            message.attempts = max(0, message.attempts - 1)
            if message.attempts == 0:  # the give-up clock starts with the first attempt that counts
                message.first_attempt_at = None
            delay = self.retry.delay(max(1, message.attempts), result.retry_after)
            message.next_attempt_at = now + timedelta(seconds=delay)
            events.transition(session, message, "deferred", now=now,
                              detail=f"{result.error}; transport problem, retry in {int(delay)} s")
            summary.deferred += 1
        elif result.permanent or self.retry.exhausted(message.attempts, message.first_attempt_at, now):
            detail = result.error if result.permanent else f"gave up after {message.attempts} attempts: {result.error}"
            message.last_error = detail
            events.transition(session, message, "failed", now=now, detail=detail)
            summary.failed += 1
            self._advance(session, enrollment, subscriber, self.campaigns.get(message.campaign), message, now)
        else:
            delay = self.retry.delay(message.attempts, result.retry_after)
            message.next_attempt_at = now + timedelta(seconds=delay)
            events.transition(session, message, "deferred", now=now,
                              detail=f"{result.error}; retry in {int(delay)} s")
            summary.deferred += 1

    def _advance(self, session: Session, enrollment: Enrollment, subscriber: Subscriber, campaign: Campaign | None,
                 message: Message, now: datetime) -> None:
        """The next step is due its delay after this one finished, at the send hour in the reader's zone."""
        if enrollment.status != "active" or campaign is None:
            return
        here = campaign.step_by_key(message.step_key)  # issue 5: the step's place in the current file
        enrollment.next_step = here.index + 1 if here is not None else max(enrollment.next_step,
                                                                           message.step_index + 1)
        enrollment.last_sent_at = now
        enrollment.updated_at = now
        nxt = campaign.step(enrollment.next_step)
        enrollment.next_step_key = nxt.key if nxt is not None else None  # issue 5: for `campaigns diff`
        if nxt is None:
            enrollment.status = "completed"
            enrollment.next_due_at = None
            events.record(session, type="enrollment_completed", now=now, subscriber_id=subscriber.id,
                          detail=campaign.key)
            self._continue_into(session, enrollment, subscriber, campaign, now)
            return
        enrollment.next_due_at = step_due(campaign, nxt, after=now, reader_timezone=subscriber.timezone)

    # -- double opt-in confirmations (issue 5) ---------------------------------------------------
    def _send_confirmations(self, now: datetime) -> int:
        """Granted confirmation emails go first; see service/optin.py."""
        if self.confirm_url is None:
            return 0
        days = max(1, self.confirm_expiry.days)

        def compose(job: optin.ConfirmJob) -> OutboundEmail:
            return compose_confirmation(
                self.composer, campaign=job.campaign, to_email=job.to_email, name=job.name,
                confirm_url=self.confirm_url(job.public_id, job.campaign.key),
                unsubscribe_url=self.unsubscribe_url(job.public_id, job.campaign.key), now=now,
                pending_id=job.pending_id, expiry_days=days)
        return optin.send_due(self.sessions, campaigns=self.campaigns, now=now, real_now=self.real_clock(),
                              compose=compose, transport_factory=self.transport_factory, lease=self.lease,
                              max_age=self.confirm_expiry)

    # -- continuation (issue 5) ------------------------------------------------------------------
    def _continue_into(self, session: Session, enrollment: Enrollment, subscriber: Subscriber,
                       campaign: Campaign, now: datetime) -> None:
        """A completed lead magnet leads into its shared sequence (see service/continuation.py)."""
        if continue_enrollment(session, enrollment=enrollment, subscriber=subscriber, campaign=campaign,
                               campaigns=self.campaigns, now=now) is not None:
            log.info("enrollment %s completed %s; continued into %s", enrollment.id, campaign.key,
                     campaign.continue_into)
