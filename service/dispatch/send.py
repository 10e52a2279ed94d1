"""Send: one pass's sending of the messages it claimed, with the state that pass needs (which messages it
still holds, when it last renewed their lease, what it handed over but has not yet written down, the
outcome write in flight). A pass makes one `SendRun`, and it ends with the pass.

Emails are composed as the transport asks for them and handed over one at a time; at most
`recheck_seconds` before each one the reader is re-checked (still subscribed, enrollment active, not
suppressed, message still held by this worker); outcomes are written every `flush_seconds` (on PostgreSQL
by a second thread while sending goes on). Leases are renewed every third of a lease.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import String, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.core import events
from service.core.models import Enrollment, Message, Subscriber, Suppression
from service.dispatch import sending_pause as sending
from service.dispatch.policy import PassSummary
from service.dispatch.record import load_rows, write_outcomes
from service.enrollment.advance import advance
from service.enrollment.continuation import origin_why
from service.enrollment.suppression import email_hash
from service.transports.base import OutboundEmail, SendResult, Transport, TransportError

if TYPE_CHECKING:
    from service.compose.composer import ComposeJob
    from service.dispatch.dispatcher import Dispatcher

log = logging.getLogger(__name__)
# Emails per prepare/compose/send round. With batches of 500 (DRIP_BATCH_SIZE) this costs ~9 % less CPU
# per email than chunks of 100 in batches of 200 (fewer statements per email), measured with two workers.
CHUNK = 250


@dataclass
class SendRun:
    """The sending of one pass: created by the pass, settled and closed when it ends."""

    d: Dispatcher
    unfinished: set[int] = field(default_factory=set)
    lease_renewed: float = 0.0
    sent: int = 0
    raw: dict[int, bytes | tuple[bytes, ...]] = field(default_factory=dict)
    recorder: ThreadPoolExecutor | None = None
    in_flight: tuple[Future, PassSummary, tuple] | None = None
    unwritten: tuple | None = None

    def close(self) -> None:
        """Ends the outcome writer's thread, if this pass started one."""
        if self.recorder is not None:
            self.recorder.shutdown(wait=True)
            self.recorder = None

    def send_claimed(self, ids: Sequence[int], transport: Transport, clock: Callable[[], datetime],
                     summary: PassSummary, *, wait: bool = True) -> None:
        """Sends the claimed `ids` chunk by chunk; after a transport failure the rest of the chunks are
        handed back (bad credentials: sending pauses) or deferred without counting an attempt.

        `wait=False`: the last outcomes may still be being written (on PostgreSQL, by the second thread)
        when this returns, so the pass claims and prepares its next batch meanwhile; the pass then calls
        `wait_recorded` once it claims no more. A message whose outcome is being written is still held
        by this worker's lease, so no claim takes it (claim.py)."""
        self.unfinished = set(ids)
        self.lease_renewed = time.monotonic()
        broken: TransportError | None = None
        size = max(CHUNK, getattr(transport, "chunk", CHUNK))  # an API transport takes larger chunks
        for start in range(0, len(ids), size):
            chunk = ids[start:start + size]
            if broken is not None and broken.auth_failed:
                self.release(chunk, clock())
                continue
            if broken is not None:
                failed = SendResult(ok=False, error=str(broken), retry_after=broken.retry_after, transport=True)
                self.record(clock(), [(i, failed) for i in chunk], summary)
                continue
            jobs = self.prepare(chunk, clock(), summary)
            broken = self.send_chunk(jobs, transport, clock, summary)
        if wait:
            self._wait_recorded(summary)
        self.unfinished = set()
        if broken is not None and broken.auth_failed:
            summary.paused = 1

    def keep_lease(self) -> None:
        """Renew the lease of every message this worker still holds, well before it can expire, so no
        other worker takes over a message that is still being sent. Messages whose lease was lost
        anyway (the database was unreachable for a whole lease) are dropped from this pass."""
        if self.unfinished and time.monotonic() - self.lease_renewed >= self.d.lease.total_seconds() / 3:
            held = self.renew_lease(sorted(self.unfinished))
            lost = self.unfinished - held
            if lost:
                log.warning("lost the lease of %d messages; another worker will send them", len(lost))
            self.unfinished = held
            self.lease_renewed = time.monotonic()

    def prepare(self, ids: Sequence[int], now: datetime, summary: PassSummary) -> list[ComposeJob]:
        """Drop readers no longer wanted and compose-ready jobs for the rest."""
        from service.compose.composer import ComposeJob  # only a pass that sends needs the composer

        jobs: list[ComposeJob] = []
        with self.d.sessions() as session, session.begin():
            gone: list[int] = []  # campaign or step no longer exists: failed (ORM, rare)
            for row in self._wanted(session, ids, now, summary):
                campaign = self.d.campaigns.get(row.campaign)
                # found by key, so a step that moved in the file since it was queued still goes
                step = campaign.step_by_key(row.step_key) if campaign else None
                if campaign is None or step is None:
                    gone.append(row.id)
                    continue
                jobs.append(ComposeJob(
                    message_pk=row.id, message_id=row.message_id or "", campaign=campaign, step=step,
                    to_email=row.to_email, name=row.name,
                    unsubscribe_url=self.d.unsubscribe_url(row.public_id, campaign.key), now=now,
                    public_id=row.public_id,  # the footer's preference link
                    why=origin_why(row, campaign, self.d.campaigns),  # a continued enrollment names its lead magnet
                ))
            for message, subscriber, enrollment in load_rows(session, gone):
                campaign = self.d.campaigns.get(message.campaign)
                self.unfinished.discard(message.id)
                events.transition(session, message, "failed", now=now,
                                  detail=f"campaign step {message.campaign}/{message.step_key} no longer exists")
                advance(session, enrollment, subscriber, campaign, message, now, self.d.campaigns)
                summary.failed += 1
        return jobs

    def recheck(self, ids: Sequence[int], now: datetime, summary: PassSummary) -> set[int]:
        """Of `ids`, those still held by this worker and still wanted; the unwanted become `suppressed`."""
        with self.d.sessions() as session, session.begin():
            return {row.id for row in self._wanted(session, ids, now, summary)}

    def _wanted(self, session: Session, ids: Sequence[int], now: datetime, summary: PassSummary) -> list[Row]:
        """The rows of `ids` this worker still holds and whose reader still wants them, in id order. Those
        another worker took over are forgotten; those whose reader left (unsubscribed, bounced, stopped,
        suppressed) become `suppressed` here. Two queries and one UPDATE for the whole chunk (the
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
            .where(self.d.one_of(Message.id, ids))
            .order_by(Message.id)
        ).all()
        hashes = {row.id: email_hash(row.email_key) for row in rows}
        listed = set(session.scalars(select(Suppression.email_hash)
                                     .where(self.d.one_of(Suppression.email_hash, set(hashes.values()), String))))
        keep: list[Row] = []
        dropped: list[dict] = []
        for row in rows:
            if row.status != "sending" or row.claimed_by != self.d.worker_id:
                self.unfinished.discard(row.id)  # another worker holds it now
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
            self.unfinished.discard(row.id)
            dropped.append(dict(type="suppressed", created_at=now, subscriber_id=row.subscriber_id,
                                message_id=row.id, detail=reason))
        if dropped:
            table = Message.__table__
            session.execute(update(table).where(table.c.id.in_([d["message_id"] for d in dropped]))
                            .values(status="suppressed", updated_at=now, lease_until=None))
            events.record_many(session, dropped)
            summary.suppressed += len(dropped)
        return keep

    def send_chunk(self, jobs: list[ComposeJob], transport: Transport, clock: Callable[[], datetime],
                   summary: PassSummary) -> TransportError | None:
        """Compose and send `jobs`, recording outcomes every `flush_seconds`. Each email is
        composed as the transport asks for it, so a pipelining transport composes the next one while
        the server is still answering the last (see `_feed`)."""
        outcomes: list[tuple[int, SendResult]] = []  # the feed adds compose failures here too
        subjects: dict[int, str] = {}
        self.raw = {}  # kept "as sent" by record()
        handed: list[OutboundEmail] = []  # result n belongs to handed[n]
        # A provider API sent fields, not our MIME, signs what it builds: signing ours would be thrown away.
        sign = getattr(transport, "sends_mime", True)
        results = transport.send(self._feed(jobs, handed, outcomes, subjects, clock, summary, sign))
        last_flush, n = time.monotonic(), 0

        def flush(*, last: bool = False) -> None:
            if self.d.background and not last:
                self._record_in_background(clock(), outcomes, summary, subjects)
            else:
                self.record(clock(), outcomes, summary, subjects)
            outcomes.clear()

        def unanswered() -> list[int]:
            answered = {item.message_pk for item in handed[:n]} | {pk for pk, _result in outcomes}
            return [job.message_pk for job in jobs
                    if job.message_pk not in answered and job.message_pk in self.unfinished]

        try:
            for result in results:
                outcomes.append((handed[n].message_pk, result))
                n += 1
                self.keep_lease()
                if time.monotonic() - last_flush >= self.d.flush_seconds:
                    flush()
                    last_flush = time.monotonic()
            # Inside the try: this flush is where an earlier background write's failure may surface.
            flush()  # written in the background on PostgreSQL; waited for by the next write or the pass
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
                self.unwritten = None
                log.error("could not record them either; they will be reclaimed after the lease")
            raise
        except TransportError as exc:
            # An earlier background write that failed is written once more before these answers, which
            # would otherwise be lost with it (the emails then sent again after their lease).
            try:
                self._wait_recorded(summary)
            except SQLAlchemyError:
                self._rewrite_failed(summary)
            if exc.auth_failed:  # bad credentials pause sending; no message is failed or charged
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
              subjects: dict[int, str], clock: Callable[[], datetime], summary: PassSummary,
              sign: bool = True) -> Iterator[OutboundEmail]:
        """Composes and hands emails to the transport one by one. When more than `recheck_seconds` have
        passed since the last check, the rest of the chunk is re-checked first: an unsubscribe that arrives
        while a slow relay works through the chunk still stops the emails not yet handed over."""
        checked = time.monotonic()
        wanted = {job.message_pk for job in jobs}
        for i, job in enumerate(jobs):
            if time.monotonic() - checked >= self.d.recheck_seconds:
                wanted = self.recheck([j.message_pk for j in jobs[i:]], clock(), summary)
                checked = time.monotonic()
            if job.message_pk not in wanted or job.message_pk not in self.unfinished:
                continue
            try:
                item = self.d.composer.compose(job, sign=sign)
            except Exception as exc:  # a template bug fails this message loudly, not the pass
                log.exception("cannot compose message %s", job.message_pk)
                outcomes.append((job.message_pk, SendResult(ok=False, permanent=True,
                                                            error=f"compose failed: {exc}")))
                continue
            subjects[item.message_pk] = item.subject
            self.raw[item.message_pk] = item.layout or item.raw  # as_sent.store takes either
            handed.append(item)
            yield item

    def release(self, ids: Sequence[int], now: datetime, *, pause_reason: str | None = None) -> None:
        """Hand claimed messages back untouched (attempt not counted, due now) and optionally pause sending.
        Used when the provider refused our credentials: the messages are fine, our configuration is not."""
        self.unfinished.difference_update(ids)
        with self.d.sessions() as session, session.begin():
            if pause_reason:
                sending.pause(session, pause_reason, now=now)
            for m in session.scalars(select(Message).where(Message.id.in_(ids)).with_for_update()):
                if m.status != "sending" or m.claimed_by != self.d.worker_id:
                    continue
                why = f"sending paused: {pause_reason}" if pause_reason else "sending paused"
                events.transition(session, m, "deferred", now=now, detail=f"{why}; attempt not counted")
                m.attempts = max(0, m.attempts - 1)
                m.first_attempt_at = m.first_attempt_at if m.attempts else None
                m.next_attempt_at, m.lease_until, m.claimed_by = now, None, None

    def renew_lease(self, ids: Sequence[int]) -> set[int]:
        """Extends this worker's lease on `ids`; returns the ids it still holds."""
        with self.d.sessions() as session, session.begin():
            held = session.scalars(
                update(Message)
                .where(Message.id.in_(ids), Message.status == "sending", Message.claimed_by == self.d.worker_id)
                .values(lease_until=self.d.real_clock() + self.d.lease)
                .returning(Message.id)
            ).all()
        return set(held)

    def record(self, now: datetime, outcomes: Sequence[tuple[int, SendResult]], summary: PassSummary,
               subjects: Mapping[int, str] | None = None) -> None:
        """Write the outcomes of messages this worker holds. The common outcome (accepted, and the
        enrollment moves on to a next step) is written set-based: one UPDATE of the messages, one of the
        enrollments, one INSERT of the events and one of the "as sent" copies per flush. Every other
        outcome (bounce, deferral, failure, the last step of a campaign) goes through `_apply` row by row."""
        if not outcomes:
            return
        self._wait_recorded(summary)  # in order: an earlier flush still being written goes first
        by_id, raws = self._take(outcomes)
        delta = PassSummary()
        write_outcomes(self.d, now, by_id, raws, dict(subjects or {}), delta)
        self._merge(summary, delta)

    def _take(self, outcomes: Sequence[tuple[int, SendResult]]) -> tuple[dict[int, SendResult], dict[int, bytes]]:
        """The dispatcher's own bookkeeping for outcomes about to be written (always in its thread)."""
        by_id = dict(outcomes)
        self.unfinished.difference_update(by_id)
        return by_id, {pk: raw for pk in by_id if (raw := self.raw.pop(pk, None)) is not None}

    def _merge(self, summary: PassSummary, delta: PassSummary) -> None:
        for key, value in vars(delta).items():
            setattr(summary, key, getattr(summary, key) + value)
        self.sent += delta.sent

    def _record_in_background(self, now: datetime, outcomes: Sequence[tuple[int, SendResult]],
                              summary: PassSummary, subjects: Mapping[int, str]) -> None:
        """On PostgreSQL the flushes of a chunk are written by a second thread while this one goes
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
        if self.recorder is None:
            self.recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drip-record")
        mine = {pk: subjects[pk] for pk in by_id if pk in subjects}
        self.in_flight = (self.recorder.submit(write_outcomes, self.d, now, by_id, raws, mine, delta), delta,
                           (now, by_id, raws, mine))

    def wait_recorded(self, summary: PassSummary) -> None:
        """Waits for the outcome write still in flight, its counts added to `summary`."""
        self._wait_recorded(summary)

    def _wait_recorded(self, summary: PassSummary) -> None:
        if self.in_flight is not None:
            future, delta, batch = self.in_flight
            self.in_flight = None
            try:
                future.result()  # re-raises the writer's exception in this thread
            except SQLAlchemyError:
                self.unwritten = batch  # send_chunk tries once more, then lets the lease decide
                raise
            self._merge(summary, delta)

    def settle(self) -> None:
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
        self.unwritten = None

    def _rewrite_failed(self, summary: PassSummary) -> None:
        """After a database error: the outcomes of a background write that failed, written once more."""
        if self.unwritten is not None:
            now, by_id, raws, subjects = self.unwritten
            self.unwritten = None
            delta = PassSummary()
            write_outcomes(self.d, now, by_id, raws, subjects, delta)
            self._merge(summary, delta)
