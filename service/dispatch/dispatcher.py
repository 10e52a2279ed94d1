"""The worker's dispatcher: one pass = queue what is due, claim it, send it, record what happened.

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

The `Dispatcher` holds only what lives across passes (its settings and collaborators, the stop flag,
when it last pruned); each pass makes its own `SendRun` (send.py) for the state that one pass needs.
The stages are queue.py, claim.py, send.py and record.py; policy.py holds the retry rule.

Two clocks: `now` (the pass's clock, which `drip tick --now` sets) decides what is due and when a retry
is due; leases always run on the real clock, so a look-ahead tick can neither steal a live worker's
claim nor leave rows locked until the date it pretended to be.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, delete
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeEngine

from service.audience import optin
from service.campaigns.model import Campaign
from service.core import counts
from service.core.config import SendLimits
from service.core.db import one_of, utcnow
from service.core.models import DispatchPass
from service.dispatch import claim as claiming
from service.dispatch import queue as queueing
from service.dispatch import retention
from service.dispatch import sending_pause as sending
from service.dispatch.policy import PassSummary, RetryPolicy
from service.dispatch.send import SendRun
from service.enrollment import live_edits
from service.feedback import delivery
from service.transports.base import OutboundEmail, Transport

if TYPE_CHECKING:
    # The composer (Jinja, markdown-it, DKIM) is imported by the first pass that sends: a `drip tick` with
    # nothing due never loads it (docs/performance.md, "The console on a year-old database").
    from service.compose.composer import Composer

log = logging.getLogger(__name__)

PASS_HISTORY = timedelta(hours=1)  # dispatch_passes rows kept for the metrics


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
    limits: SendLimits | None = None  # per-domain hourly/daily caps and warm-up
    delivery_policy: delivery.Policy = field(default_factory=delivery.Policy)
    max_per_day: int = 0  # most emails per reader per local day across campaigns; 0 = no cap
    # Double opt-in: (public_id, campaign) -> confirm URL; None disables confirmation sending.
    confirm_url: Callable[[str, str], str] | None = None
    confirm_expiry: timedelta = timedelta(days=7)
    # Set on SIGTERM: the pass finishes the batch it holds and claims no more, so a restart never waits
    # for the whole backlog and never leaves leased rows behind.
    stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    event_retention_days: int | None = None  # see retention.py
    # Write outcomes on a second thread while sending goes on (see SendRun.record_in_background);
    # None = on PostgreSQL only.
    background_writes: bool | None = None
    _pruned_at: float = field(default=float("-inf"), init=False, repr=False)
    _reactivated: bool = field(default=False, init=False, repr=False)

    # -- the pass --------------------------------------------------------------------------------
    def run_pass(self, now: datetime | None = None) -> PassSummary:
        started, started_at = time.monotonic(), utcnow()
        run = SendRun(self)
        try:
            return self._run_pass(now, run)
        finally:
            run.settle()
            run.close()
            self._record_pass(started_at, time.monotonic() - started, run.sent)
            self._prune()

    def _run_pass(self, now: datetime | None, run: SendRun) -> PassSummary:
        clock: Callable[[], datetime] = (lambda: now) if now is not None else utcnow
        summary = PassSummary()
        refresh = getattr(self.campaigns, "refresh", None)
        if refresh is not None and refresh():  # a version published since the last pass: send it from now on
            self._reactivated = False
        if not self._reactivated:  # once per loaded campaign set: appended steps reach readers who had finished
            with self.sessions() as session, session.begin():  # only for campaigns whose steps changed
                changed = live_edits.changed_since_checked(session, self.campaigns, clock())
                live_edits.reactivate_grown(session, changed, clock())
            self._reactivated = True
        with self.sessions() as session:
            paused_now = sending.paused_reason(session) is not None
        if not paused_now:  # a provider refused our key: confirmations wait like everything else
            self._send_confirmations(clock())  # double opt-in, outside the message log
        while self.queue_due(clock(), summary) >= self.batch_size:
            pass
        # Messages a provider keeps deferring fail at a deadline; a paused service claims nothing.
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
                run.send_claimed(claimed, transport, clock, summary, wait=False)
            run.wait_recorded(summary)  # the last batch's outcomes, written while the next claim was made
        finally:
            if transport is not None:
                transport.close()
        return summary

    # -- the stages, one call each (tests and tools drive them one at a time) ----------------------
    def queue_due(self, now: datetime, summary: PassSummary) -> int:
        """Queue the next step of up to `batch_size` due enrollments (queue.py)."""
        return queueing.queue_due(self, now, summary)

    def claim(self, now: datetime, summary: PassSummary) -> list[int]:
        """Lease up to `batch_size` due messages to this worker (claim.py)."""
        return claiming.claim(self, now, summary)

    def send_claimed(self, ids: Sequence[int], transport: Transport, clock: Callable[[], datetime],
                     summary: PassSummary) -> None:
        """Send messages already claimed, as a pass of their own (send.py)."""
        run = SendRun(self)
        try:
            run.send_claimed(ids, transport, clock, summary)
        finally:
            run.settle()
            run.close()

    # -- what the stages share -----------------------------------------------------------------------
    def one_of(self, column, values: Iterable, element_type: type[TypeEngine] = BigInteger):
        return one_of(self.sessions.kw["bind"].dialect.name, column, values, element_type)

    @property
    def background(self) -> bool:
        if self.background_writes is None:
            self.background_writes = self.sessions.kw["bind"].dialect.name == "postgresql"
        return self.background_writes

    # -- around the pass -------------------------------------------------------------------------------
    def _send_confirmations(self, now: datetime) -> int:
        """Granted double opt-in confirmation emails go first; see audience/optin.py."""
        if self.confirm_url is None:
            return 0
        days = max(1, self.confirm_expiry.days)

        def compose(job: optin.ConfirmJob) -> OutboundEmail:
            from service.compose.composer import compose_confirmation  # (see the TYPE_CHECKING import above)

            return compose_confirmation(
                self.composer, campaign=job.campaign, to_email=job.to_email, name=job.name,
                confirm_url=self.confirm_url(job.public_id, job.campaign.key),
                unsubscribe_url=self.unsubscribe_url(job.public_id, job.campaign.key), now=now,
                pending_id=job.pending_id, expiry_days=days, kind="comeback" if job.returning else "confirm")
        return optin.send_due(self.sessions, campaigns=self.campaigns, now=now, real_now=self.real_clock(),
                              compose=compose, transport_factory=self.transport_factory, lease=self.lease,
                              max_age=self.confirm_expiry)

    def _prune(self) -> None:
        """History retention: at most once an hour per worker, old events and stored emails go."""
        if not self.event_retention_days or time.monotonic() - self._pruned_at < 3600:
            return
        self._pruned_at = time.monotonic()
        try:
            pruned = retention.prune(self.sessions, now=utcnow(), days=self.event_retention_days)
            if pruned.events or pruned.contents:
                log.info("retention: %d events and %d stored emails deleted", pruned.events, pruned.contents)
        except Exception:  # housekeeping must never fail a pass
            log.exception("retention pruning failed")

    def _record_pass(self, started_at: datetime, seconds: float, sent: int) -> None:
        """Every pass's wall-clock duration goes to the database, so /metrics in any process reports every
        worker's passes. Old rows are pruned, and the maintained counts folded, in the same transaction."""
        try:
            with self.sessions() as session, session.begin():
                session.add(DispatchPass(worker=self.worker_id[:80], started_at=started_at,
                                         duration_seconds=seconds, sent=sent))
                session.execute(delete(DispatchPass).where(DispatchPass.started_at < started_at - PASS_HISTORY))
                # PostgreSQL: the count changes this pass appended go into the count tables, so readers sum
                # a handful of rows (service/core/counts.py; one worker at a time, the others skip).
                counts.fold(session)
        except Exception:  # a metric must never fail a pass that has already sent its emails
            log.exception("could not record the pass duration")
