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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from . import events
from .campaigns import Campaign, due_at
from .compose import ComposeJob, Composer, new_message_id
from .db import utcnow
from .models import Enrollment, Message, Subscriber
from .suppression import is_suppressed, stop_subscriber, suppress_address
from .transports.base import SendResult, Transport, TransportError

log = logging.getLogger(__name__)

CHUNK = 50
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
    # Issue 7: set on SIGTERM; the pass finishes the batch it holds and claims no more, so a restart
    # never waits for the whole backlog and never leaves leased rows behind.
    stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
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
            while not self.stopping.is_set() and (claimed := self.claim(clock(), summary)):
                if transport is None:
                    transport = self.transport_factory()
                self.send_claimed(claimed, transport, clock, summary)
        finally:
            if transport is not None:
                transport.close()
        return summary

    # -- 1. queue --------------------------------------------------------------------------------
    def queue_due(self, now: datetime, summary: PassSummary) -> int:
        with self.sessions() as session, session.begin():
            rows = session.execute(
                select(Enrollment, Subscriber)
                .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
                .where(Enrollment.status == "active", Enrollment.next_due_at <= now)
                .order_by(Enrollment.next_due_at, Enrollment.id)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True, of=Enrollment)
            ).all()
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            for enrollment, subscriber in rows:
                campaign = self.campaigns.get(enrollment.campaign)
                if campaign is None:
                    log.warning("enrollment %s: campaign %r is not loaded; left waiting", enrollment.id,
                                enrollment.campaign)
                    enrollment.next_due_at = now + timedelta(hours=1)
                    continue
                step = campaign.step(enrollment.next_step)
                if step is None or subscriber.status != "active":
                    self._finish_enrollment(session, enrollment, now, completed=step is None, summary=summary)
                    continue
                result = session.execute(
                    insert(Message).values(
                        enrollment_id=enrollment.id, subscriber_id=subscriber.id, campaign=campaign.key,
                        step_key=step.key, step_index=step.index, to_email=subscriber.email, status="queued",
                        attempts=0, next_attempt_at=now, created_at=now, updated_at=now,
                        message_id=new_message_id(self.composer.from_header(campaign), enrollment.id,
                                                  secrets.token_hex(10)),
                    ).on_conflict_do_nothing(index_elements=["enrollment_id", "step_key"])
                    .returning(Message.id)
                ).scalar()
                enrollment.next_due_at = None
                enrollment.updated_at = now
                if result is not None:
                    summary.queued += 1
                    events.record(session, type="queued", now=now, subscriber_id=subscriber.id, message_id=result,
                                  detail=f"{campaign.key}/{step.key} queued")
            return len(rows)

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
        with self.sessions() as session, session.begin():
            messages = session.scalars(
                select(Message)
                .where(or_(
                    and_(Message.status.in_(("queued", "deferred")), Message.next_attempt_at <= now),
                    and_(Message.status == "sending", Message.lease_until < now),
                ))
                .order_by(Message.next_attempt_at, Message.id)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            for m in messages:
                if m.status == "sending":
                    summary.reclaimed += 1
                    events.record(session, type="reclaimed", now=now, subscriber_id=m.subscriber_id, message_id=m.id,
                                  detail=f"lease of {m.claimed_by} expired; that attempt's outcome is unknown")
                events.transition(session, m, "sending", now=now, event_type="attempt",
                                  detail=f"attempt {m.attempts + 1} by {self.worker_id}")
                m.attempts += 1
                m.lease_until = now + self.lease
                m.claimed_by = self.worker_id
                m.first_attempt_at = m.first_attempt_at or now
            return [m.id for m in messages]

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
        """Re-check each reader just before sending and compose the emails of those still wanted."""
        jobs: list[ComposeJob] = []
        with self.sessions() as session, session.begin():
            rows = session.execute(
                select(Message, Subscriber, Enrollment)
                .join(Subscriber, Subscriber.id == Message.subscriber_id)
                .join(Enrollment, Enrollment.id == Message.enrollment_id)
                .where(Message.id.in_(ids))
                .order_by(Message.id)
            ).all()
            for message, subscriber, enrollment in rows:
                if message.status != "sending" or message.claimed_by != self.worker_id:
                    continue
                reason = self._unwanted(session, subscriber, enrollment)
                if reason:
                    self._unfinished.discard(message.id)
                    events.transition(session, message, "suppressed", now=now, detail=reason)
                    message.lease_until = None
                    summary.suppressed += 1
                    continue
                campaign = self.campaigns.get(message.campaign)
                step = campaign.step(message.step_index) if campaign else None
                if campaign is None or step is None or step.key != message.step_key:
                    self._unfinished.discard(message.id)
                    events.transition(session, message, "failed", now=now,
                                      detail=f"campaign step {message.campaign}/{message.step_key} no longer exists")
                    self._advance(session, enrollment, subscriber, campaign, message, now)
                    summary.failed += 1
                    continue
                jobs.append(ComposeJob(
                    message_pk=message.id, message_id=message.message_id or "", campaign=campaign, step=step,
                    to_email=message.to_email, name=subscriber.name,
                    unsubscribe_url=self.unsubscribe_url(subscriber.public_id, campaign.key), now=now,
                ))
        return jobs

    def _unwanted(self, session: Session, subscriber: Subscriber, enrollment: Enrollment) -> str | None:
        if subscriber.status != "active":
            return f"subscriber is {subscriber.status}"
        if enrollment.status != "active":
            return f"enrollment is {enrollment.status}"
        if is_suppressed(session, subscriber.email_key):
            return "address is on the suppression list"
        return None

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
        if not outcomes:
            return
        by_id = dict(outcomes)
        self._unfinished.difference_update(by_id)
        with self.sessions() as session, session.begin():
            rows = session.execute(
                select(Message, Subscriber, Enrollment)
                .join(Subscriber, Subscriber.id == Message.subscriber_id)
                .join(Enrollment, Enrollment.id == Message.enrollment_id)
                .where(Message.id.in_(by_id))
                .with_for_update(of=Message)
            ).all()
            for message, subscriber, enrollment in rows:
                if message.status != "sending" or message.claimed_by != self.worker_id:
                    log.warning("message %s was reclaimed by %s before our outcome was recorded", message.id,
                                message.claimed_by)
                    continue
                if subjects and message.id in subjects:
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
