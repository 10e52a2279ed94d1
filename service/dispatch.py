"""Dispatch: one pass = queue what is due, claim it, send it, record what happened.

Record, then send, then record:
1. queue: every active enrollment whose next step is due gets its message row (unique per
   enrollment and step), and stops being due until that message is finished;
2. claim: due messages move to `sending` with a lease, in their own committed transaction
   (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite runs one writer at a time);
3. send outside any transaction, re-checking just before each chunk that the reader is still
   subscribed; outcomes are written back every `flush_seconds` and at the end.

A worker killed mid-pass leaves `sending` rows whose lease expires; the next pass anywhere reclaims
them. The only email that can go out twice is one the dead worker had handed to the server but not
yet recorded, and that reclaim is written in the message's history.
"""
from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Row, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from . import events
from .campaigns import Campaign, due_at
from .compose import ComposeJob, Composer, new_message_id
from .db import utcnow
from .models import Enrollment, Message, Subscriber, Suppression
from .suppression import email_hash, stop_subscriber, suppress_address
from .transports.base import SendResult, Transport, TransportError

log = logging.getLogger(__name__)

# Emails re-checked, composed and sent per step. 100 at ~1,000 emails/s re-checks a reader at most ~0.1 s
# before sending; each chunk costs a fixed few statements, so 50 spent twice as many round trips per email.
CHUNK = 100
GIVE_UP_AFTER = timedelta(days=3)


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
    batch_size: int = 200
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    worker_id: str = field(default_factory=worker_name)
    flush_seconds: float = 0.1
    _unfinished: set[int] = field(default_factory=set, init=False, repr=False)
    _lease_renewed: float = field(default=0.0, init=False, repr=False)

    # -- the pass --------------------------------------------------------------------------------
    def run_pass(self, now: datetime | None = None) -> PassSummary:
        clock: Callable[[], datetime] = (lambda: now) if now is not None else utcnow
        summary = PassSummary()
        while (n := self.queue_due(clock(), summary)) >= self.batch_size:
            pass
        del n
        transport: Transport | None = None
        try:
            while claimed := self.claim(clock(), summary):
                if transport is None:
                    transport = self.transport_factory()
                self.send_claimed(claimed, transport, clock, summary)
        finally:
            if transport is not None:
                transport.close()
        return summary

    # -- 1. queue --------------------------------------------------------------------------------
    def queue_due(self, now: datetime, summary: PassSummary) -> int:
        """Give each due enrollment of one batch its message row. Set-based: one locked SELECT, one
        multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING, one UPDATE and one events INSERT per batch
        (per-row ORM work here was half the cost of a pass in bench/send.py)."""
        with self.sessions() as session, session.begin():
            rows = session.execute(
                select(Enrollment.id, Enrollment.subscriber_id, Enrollment.campaign, Enrollment.next_step,
                       Subscriber.status, Subscriber.email)
                .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
                .where(Enrollment.status == "active", Enrollment.next_due_at <= now)
                .order_by(Enrollment.next_due_at, Enrollment.id)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True, of=Enrollment)
            ).all()
            new_messages, waiting, finished = [], [], []
            domains: dict[str, str] = {}  # Message-ID domain per campaign: parseaddr once per batch, not per row
            for row in rows:
                campaign = self.campaigns.get(row.campaign)
                if campaign is None:
                    log.warning("enrollment %s: campaign %r is not loaded; left waiting", row.id, row.campaign)
                    waiting.append(row.id)
                    continue
                step = campaign.step(row.next_step)
                if step is None or row.status != "active":
                    finished.append((row, step is None))
                    continue
                new_messages.append(dict(
                    enrollment_id=row.id, subscriber_id=row.subscriber_id, campaign=campaign.key, step_key=step.key,
                    step_index=step.index, to_email=row.email, status="queued", attempts=0, next_attempt_at=now,
                    created_at=now, updated_at=now,
                    message_id=new_message_id(domains.get(campaign.key) or domains.setdefault(
                        campaign.key, self.composer.from_header(campaign)), row.id, secrets.token_hex(10))))
            if waiting:
                session.execute(update(Enrollment).where(Enrollment.id.in_(waiting))
                                .values(next_due_at=now + timedelta(hours=1)))
            self._finish_enrollments(session, finished, now, summary)
            self._insert_messages(session, new_messages, now, summary)
            return len(rows)

    def _insert_messages(self, session: Session, values: list[dict], now: datetime, summary: PassSummary) -> None:
        """The message rows, unique per (enrollment, step): a row another pass already made is left alone.
        Either way the enrollment stops being due until that message is finished."""
        if not values:
            return
        session.execute(update(Enrollment).where(Enrollment.id.in_([v["enrollment_id"] for v in values]))
                        .values(next_due_at=None, updated_at=now))
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        # executemany of one cached statement (SQLAlchemy batches it into multi-row INSERTs itself);
        # compiling a fresh 200-row VALUES clause per batch cost more than running it.
        table = Message.__table__
        inserted = session.execute(
            insert(table).on_conflict_do_nothing(index_elements=["enrollment_id", "step_key"])
            .returning(table.c.id, table.c.subscriber_id, table.c.campaign, table.c.step_key), values
        ).all()
        summary.queued += len(inserted)
        events.record_many(session, ({"type": "queued", "subscriber_id": m.subscriber_id, "message_id": m.id,
                                      "detail": f"{m.campaign}/{m.step_key} queued"} for m in inserted), now=now)

    def _finish_enrollments(self, session: Session, finished: list[tuple[Row, bool]], now: datetime,
                            summary: PassSummary) -> None:
        """Enrollments past their last step complete; those of inactive readers stop."""
        for completed in (True, False):
            rows = [row for row, done in finished if done is completed]
            if not rows:
                continue
            session.execute(
                update(Enrollment).where(Enrollment.id.in_([r.id for r in rows]))
                .values(status="completed" if completed else "stopped", next_due_at=None, updated_at=now,
                        stopped_reason=None if completed else "subscriber inactive"))
            summary.completed += len(rows) if completed else 0
            events.record_many(session, ({"type": "enrollment_completed" if completed else "enrollment_stopped",
                                          "subscriber_id": r.subscriber_id, "detail": r.campaign} for r in rows),
                               now=now)

    # -- 2. claim --------------------------------------------------------------------------------
    def claim(self, now: datetime, summary: PassSummary) -> list[int]:
        """Move one batch of due messages to `sending` under this worker's lease, in its own committed
        transaction: one locked SELECT, one executemany UPDATE, one events INSERT."""
        with self.sessions() as session, session.begin():
            rows = session.execute(
                select(Message.id, Message.subscriber_id, Message.status, Message.claimed_by, Message.attempts,
                       Message.first_attempt_at)
                # Due queued/deferred messages, and `sending` ones whose lease expired. Written as one range
                # on next_attempt_at (a `sending` row always has next_attempt_at <= now: it was claimed
                # because it was due, and only a deferral moves that time, to later, as `deferred`), so
                # PostgreSQL walks ix_messages_pending in ORDER BY order and stops after one batch; the
                # equivalent OR form made it bitmap-scan and sort every pending row for each batch.
                .where(Message.status.in_(("queued", "deferred", "sending")), Message.next_attempt_at <= now,
                       or_(Message.status != "sending", Message.lease_until < now))
                .order_by(Message.next_attempt_at, Message.id)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            reclaimed = [r for r in rows if r.status == "sending"]
            summary.reclaimed += len(reclaimed)
            events.record_many(session, (
                {"type": "reclaimed", "subscriber_id": r.subscriber_id, "message_id": r.id,
                 "detail": f"lease of {r.claimed_by} expired; that attempt's outcome is unknown"} for r in reclaimed),
                now=now)
            events.transition_many(session, [
                events.Move(r.id, r.subscriber_id, r.status, "sending", event_type="attempt",
                            detail=f"attempt {r.attempts + 1} by {self.worker_id}",
                            values={"attempts": r.attempts + 1, "lease_until": now + self.lease,
                                    "claimed_by": self.worker_id, "first_attempt_at": r.first_attempt_at or now})
                for r in rows], now=now)
            return [r.id for r in rows]

    # -- 3. send and record ----------------------------------------------------------------------
    def send_claimed(self, ids: Sequence[int], transport: Transport, clock: Callable[[], datetime],
                     summary: PassSummary) -> None:
        self._unfinished = set(ids)
        self._lease_renewed = time.monotonic()
        broken: TransportError | None = None
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            if broken is not None:
                self.record(clock(), [(i, SendResult(ok=False, error=str(broken), retry_after=broken.retry_after))
                                      for i in chunk], summary)
                continue
            jobs = self.prepare(chunk, clock(), summary)
            broken = self.send_chunk(jobs, transport, clock, summary)
        self._unfinished = set()

    def keep_lease(self, now: datetime) -> None:
        """Renew the lease of every message this worker still holds, well before it can expire, so no
        other worker takes over a message that is still being sent."""
        if self._unfinished and time.monotonic() - self._lease_renewed >= self.lease.total_seconds() / 3:
            self.renew_lease(sorted(self._unfinished), now)
            self._lease_renewed = time.monotonic()

    def prepare(self, ids: Sequence[int], now: datetime, summary: PassSummary) -> list[ComposeJob]:
        """Re-check each reader just before sending and compose the emails of those still wanted.
        One joined SELECT and one suppression lookup per chunk, instead of ORM objects and a query per row."""
        jobs: list[ComposeJob] = []
        with self.sessions() as session, session.begin():
            rows = session.execute(
                select(Message.id, Message.status, Message.claimed_by, Message.subscriber_id, Message.campaign,
                       Message.step_index, Message.step_key, Message.message_id, Message.to_email,
                       Subscriber.status.label("subscriber_status"), Subscriber.email_key, Subscriber.name,
                       Subscriber.public_id, Enrollment.status.label("enrollment_status"))
                .join(Subscriber, Subscriber.id == Message.subscriber_id)
                .join(Enrollment, Enrollment.id == Message.enrollment_id)
                .where(Message.id.in_(ids))
                .order_by(Message.id)
                .with_for_update(of=Message)
            ).all()
            mine = [r for r in rows if r.status == "sending" and r.claimed_by == self.worker_id]
            suppressed = set(session.scalars(select(Suppression.email_hash).where(
                Suppression.email_hash.in_({email_hash(r.email_key) for r in mine}))))
            unwanted, missing = [], []
            for r in mine:
                reason = self._unwanted(r, suppressed)
                campaign = self.campaigns.get(r.campaign)
                step = campaign.step(r.step_index) if campaign else None
                if reason:
                    unwanted.append(events.Move(r.id, r.subscriber_id, r.status, "suppressed", detail=reason,
                                                values={"lease_until": None}))
                elif campaign is None or step is None or step.key != r.step_key:
                    missing.append(r.id)
                else:
                    jobs.append(ComposeJob(
                        message_pk=r.id, message_id=r.message_id or "", campaign=campaign, step=step,
                        to_email=r.to_email, name=r.name,
                        unsubscribe_url=self.unsubscribe_url(r.public_id, campaign.key), now=now))
            events.transition_many(session, unwanted, now=now)
            summary.suppressed += len(unwanted)
            self._unfinished.difference_update(m.message_id for m in unwanted)
            self._fail_missing_steps(session, missing, now, summary)
        return jobs

    @staticmethod
    def _unwanted(row: Row, suppressed: set[str]) -> str | None:
        if row.subscriber_status != "active":
            return f"subscriber is {row.subscriber_status}"
        if row.enrollment_status != "active":
            return f"enrollment is {row.enrollment_status}"
        if email_hash(row.email_key) in suppressed:
            return "address is on the suppression list"
        return None

    def _fail_missing_steps(self, session: Session, ids: list[int], now: datetime, summary: PassSummary) -> None:
        """A step removed from its campaign file since queueing (rare: row by row, through the ORM)."""
        if not ids:
            return
        for message, subscriber, enrollment in session.execute(
                select(Message, Subscriber, Enrollment)
                .join(Subscriber, Subscriber.id == Message.subscriber_id)
                .join(Enrollment, Enrollment.id == Message.enrollment_id)
                .where(Message.id.in_(ids))):
            self._unfinished.discard(message.id)
            events.transition(session, message, "failed", now=now,
                              detail=f"campaign step {message.campaign}/{message.step_key} no longer exists")
            self._advance(session, enrollment, subscriber, self.campaigns.get(message.campaign), message, now)
            summary.failed += 1

    def send_chunk(self, jobs: list[ComposeJob], transport: Transport, clock: Callable[[], datetime],
                   summary: PassSummary) -> TransportError | None:
        outbound, outcomes = [], []
        for job in jobs:
            try:
                outbound.append(self.composer.compose(job))
            except Exception as exc:  # a template bug fails this message loudly, not the pass
                log.exception("cannot compose message %s", job.message_pk)
                outcomes.append((job.message_pk, SendResult(ok=False, permanent=True, error=f"compose failed: {exc}")))
        if outcomes:
            self.record(clock(), outcomes, summary)
            outcomes = []
        if not outbound:
            return None
        subjects = {item.message_pk: item.subject for item in outbound}
        results = transport.send(outbound)
        last_flush = time.monotonic()
        done = 0
        try:
            for item, result in zip(outbound, results, strict=False):
                outcomes.append((item.message_pk, result))
                done += 1
                self.keep_lease(clock())
                if time.monotonic() - last_flush >= self.flush_seconds:
                    self.record(clock(), outcomes, summary, subjects)
                    outcomes, last_flush = [], time.monotonic()
        except TransportError as exc:
            log.warning("transport unavailable: %s", exc)
            outcomes.extend((item.message_pk, SendResult(ok=False, error=str(exc), retry_after=exc.retry_after))
                            for item in outbound[done:])
            self.record(clock(), outcomes, summary, subjects)
            return exc
        self.record(clock(), outcomes, summary, subjects)
        return None

    def renew_lease(self, ids: Sequence[int], now: datetime) -> None:
        with self.sessions() as session, session.begin():
            session.execute(
                update(Message)
                .where(Message.id.in_(ids), Message.status == "sending", Message.claimed_by == self.worker_id)
                .values(lease_until=now + self.lease)
            )

    def record(self, now: datetime, outcomes: Sequence[tuple[int, SendResult]], summary: PassSummary,
               subjects: Mapping[int, str] | None = None) -> None:
        """Write outcomes back, only for rows still `sending` and claimed by this worker. Accepted emails
        (nearly all of them) are written set-based; refusals and retries go through the ORM row by row."""
        if not outcomes:
            return
        by_id = dict(outcomes)
        self._unfinished.difference_update(by_id)
        with self.sessions() as session, session.begin():
            rows = session.execute(
                select(Message.id, Message.status, Message.claimed_by, Message.subscriber_id, Message.enrollment_id,
                       Message.campaign, Message.step_index, Enrollment.status.label("enrollment_status"),
                       Subscriber.timezone)
                .join(Subscriber, Subscriber.id == Message.subscriber_id)
                .join(Enrollment, Enrollment.id == Message.enrollment_id)
                .where(Message.id.in_(by_id))
                .with_for_update(of=Message)
            ).all()
            sent, others = [], []
            for row in rows:
                if row.status != "sending" or row.claimed_by != self.worker_id:
                    log.warning("message %s was reclaimed by %s before our outcome was recorded", row.id,
                                row.claimed_by)
                    continue
                (sent if by_id[row.id].ok else others).append(row)
            self._record_sent(session, sent, by_id, subjects or {}, now, summary)
            self._record_refused(session, [r.id for r in others], by_id, subjects or {}, now, summary)

    def _record_sent(self, session: Session, rows: list[Row], by_id: Mapping[int, SendResult],
                     subjects: Mapping[int, str], now: datetime, summary: PassSummary) -> None:
        events.transition_many(session, [
            events.Move(r.id, r.subscriber_id, r.status, "sent",
                        detail=by_id[r.id].error or f"accepted ({by_id[r.id].code or 'ok'})",
                        values={"lease_until": None, "last_error": by_id[r.id].error or None, "sent_at": now,
                                "provider_message_id": by_id[r.id].provider_id, "subject": subjects.get(r.id)})
            for r in rows], now=now)
        summary.sent += len(rows)
        self._advance_many(session, rows, now)

    def _advance_many(self, session: Session, rows: list[Row], now: datetime) -> None:
        """`_advance` for a batch of sent messages: one executemany UPDATE for the enrollments that go on,
        one for those that complete. `status = 'active'` in the WHERE: an unsubscribe that stopped the
        enrollment meanwhile is never undone."""
        table = Enrollment.__table__
        going, done = [], []
        for r in rows:
            campaign = self.campaigns.get(r.campaign)
            if r.enrollment_status != "active" or campaign is None:
                continue
            nxt = campaign.step(r.step_index + 1)
            params = {"eid": r.enrollment_id, "next_step": r.step_index + 1, "now": now, "due": None}
            if nxt is None:
                done.append((r, params))
            else:
                params["due"] = due_at(delay=nxt.delay, after=now, tz_name=r.timezone or campaign.timezone,
                                       send_hour=campaign.send_hour)
                going.append(params)
        for params, status in ((going, "active"), ([p for _r, p in done], "completed")):
            if params:
                session.execute(
                    update(table).where(table.c.id == bindparam("eid"), table.c.status == "active")
                    .values(next_step=bindparam("next_step"), last_sent_at=bindparam("now"),
                            updated_at=bindparam("now"), next_due_at=bindparam("due"), status=status), params)
        events.record_many(session, ({"type": "enrollment_completed", "subscriber_id": r.subscriber_id,
                                      "detail": r.campaign} for r, _p in done), now=now)

    def _record_refused(self, session: Session, ids: list[int], by_id: Mapping[int, SendResult],
                        subjects: Mapping[int, str], now: datetime, summary: PassSummary) -> None:
        if not ids:
            return
        for message, subscriber, enrollment in session.execute(
                select(Message, Subscriber, Enrollment)
                .join(Subscriber, Subscriber.id == Message.subscriber_id)
                .join(Enrollment, Enrollment.id == Message.enrollment_id)
                .where(Message.id.in_(ids))):
            if message.id in subjects:
                message.subject = subjects[message.id]
            self._apply(session, message, subscriber, enrollment, by_id[message.id], now, summary)

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
            suppress_address(session, subscriber.email_key, reason="hard_bounce", now=now, detail=result.error)
            summary.suppressed += stop_subscriber(session, subscriber, status="bounced", reason="hard bounce", now=now)
            summary.bounced += 1
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
        enrollment.next_step = message.step_index + 1
        enrollment.last_sent_at = now
        enrollment.updated_at = now
        nxt = campaign.step(enrollment.next_step)
        if nxt is None:
            enrollment.status = "completed"
            enrollment.next_due_at = None
            events.record(session, type="enrollment_completed", now=now, subscriber_id=subscriber.id,
                          detail=campaign.key)
            return
        enrollment.next_due_at = due_at(delay=nxt.delay, after=now, tz_name=subscriber.timezone or campaign.timezone,
                                        send_hour=campaign.send_hour)
