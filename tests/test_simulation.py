"""A whole-system simulation: readers in several campaigns and time zones, driven through the real web routes,
the real database (SQLite and PostgreSQL) and a real SMTP server on loopback by the real dispatcher on an
explicit clock, and checked after every step against a small reference model of what each reader should get.

The model holds the service to what docs/design.md, docs/campaigns.md and docs/reader.md promise:
- an email arrives only as the next step of one of the reader's enrollments, queued no earlier than its due
  time (the step's delay after the previous actual send, on an allowed weekday at the send hour in the
  reader's zone), never while the reader is snoozed or the campaign is paused, never after an unsubscribe,
  a bounce, a complaint or leaving that campaign;
- no step reaches a reader twice, except the documented case of a worker killed after handing an email to
  the server and before recording it (its message's history then shows the reclaim);
- at most one non-welcome email per reader and local day (DRIP_MAX_EMAILS_PER_DAY=1); a held email waits for
  the next allowed day at its send hour, and the reader's earliest held email goes first;
- nothing waits past the first pass at or after its due time unless the model names why (snooze, paused
  campaign, the daily cap, a deferral after a 4xx, a killed worker's lease);
- after every step the database agrees with the model (subscriber states, enrollment states and due times,
  unfinished messages and their next attempts, pending confirmations), and a reader's own action (signup,
  preference page, unsubscribe, confirmation, complaint) changes no other reader's rows.

How: each example gets a fresh migrated database (a copy of the SQLite template, or truncated PostgreSQL tables,
as conftest's `database_url` does) and its own runtime and Flask app; one aiosmtpd server serves the whole test
(its accepted list and scripted replies are cleared per example). The web layer reads the simulation's clock, so
what a reader does happens at the simulated moment; leases stay on the dispatcher's real clock, moved on with the
simulated time. The shipped campaigns are used as they are, except that the glute guide is a double opt-in
campaign and the monthly newsletter sends on Tuesdays, Thursdays and Saturdays only.

Size: DRIP_SIMULATION_EXAMPLES examples (default 12) of up to DRIP_SIMULATION_STEPS steps (default 40), per
database. Raise them for a soak run, e.g.
`DRIP_SIMULATION_EXAMPLES=500 DRIP_SIMULATION_STEPS=100 .venv/bin/python -m pytest tests/test_simulation.py -x`.
A failure prints the shrunk steps and a `@reproduce_failure` blob (hypothesis also replays it from .hypothesis/).
"""
from __future__ import annotations

import email
import email.policy
import importlib
import itertools
import os
import pkgutil
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import ROOT, SmtpServer, at, emptied
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

import service.web
from service.app import create_app
from service.core.config import Settings
from service.core.db import utcnow
from service.core.models import Enrollment, Event, Message, PendingConfirmation, Subscriber
from service.dispatch.policy import PassSummary
from service.dispatch.send import SendRun
from service.operator.campaign_stats import set_paused
from service.runtime import build_runtime
from service.transports import make_transport

BASE = "https://drip.example.org"
SITE = {"Origin": BASE}
BUNDLE, NEWS, DOI = "back-pain-bundle", "monthly-newsletter", "glute-guide"
SIGNUP_CAMPAIGNS = (BUNDLE, NEWS, "leaner-you", "plateau-14", DOI)
ZONES = (None, "Europe/Paris", "Asia/Tokyo", "America/Los_Angeles", "Australia/Sydney", "Asia/Kolkata")
# Three starting moments: the week of the US spring-forward, the week the EU and US fall back, and midsummer.
STARTS = ("2026-03-05T14:00:00", "2026-10-21T06:30:00", "2026-06-10T22:00:00")
MAX_READERS = 30
CAP = 1  # DRIP_MAX_EMAILS_PER_DAY's default, which the settings below keep
COOLDOWN = timedelta(minutes=60)  # DRIP_CONFIRM_COOLDOWN_MINUTES
EXPIRY = timedelta(days=7)  # DRIP_CONFIRM_EXPIRY_DAYS
POSTMARK = ("drip", "postmark-hook-secret")
# Campaigns the operator may append a step to: (template the new step reuses, its delay).
GROWABLE = {BUNDLE: ("week-12", "7d"), "leaner-you": ("welcome", "7d"), NEWS: ("month-12", "30d")}
COMEBACK_SUBJECT = "Would you like to hear from me again?"  # a returning reader's confirmation email
PAUSABLE = (BUNDLE, NEWS, "leaner-you", DOI)
PREFERENCES = ("snooze:2", "snooze:4", "snooze:8", "resume", "digest", *(f"leave:{c}" for c in SIGNUP_CAMPAIGNS),
               *(f"zone:{z or ''}" for z in ZONES))
READER = st.integers(min_value=0, max_value=MAX_READERS - 1)
EXAMPLES = int(os.environ.get("DRIP_SIMULATION_EXAMPLES", "12"))
SIMULATION = settings(max_examples=EXAMPLES, stateful_step_count=int(os.environ.get("DRIP_SIMULATION_STEPS", "40")),
                      deadline=None, print_blob=True,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                             HealthCheck.filter_too_much, HealthCheck.data_too_large])


# -- the calendar, written from docs/campaigns.md "Send windows" (not taken from the service) -------------
def calendar(campaign, step, after: datetime, tz: str) -> datetime:
    """When `step` is due `step.delay` after `after`: whole days counted in `tz`, landing on the step's send
    hour, moved on to the next allowed weekday; an immediate step is due at once."""
    if step.delay.days == 0:
        return after + timedelta(seconds=step.delay.seconds)
    return _on_day(campaign, step, after, tz, step.delay.days)


def hold_until(campaign, step, after: datetime, tz: str) -> datetime:
    """Where the daily cap puts a held email: the next allowed day at its step's send hour."""
    return _on_day(campaign, step, after, tz, 1)


def _on_day(campaign, step, after: datetime, tz: str, days: int) -> datetime:
    hour, allowed = campaign.window(step)
    zone = ZoneInfo(tz)
    day = after.astimezone(zone).date() + timedelta(days=days)
    while day.weekday() not in allowed:
        day += timedelta(days=1)
    return datetime.combine(day, time(hour), tzinfo=zone).astimezone(UTC)


def local_midnight(moment: datetime, tz: str) -> datetime:
    local = moment.astimezone(ZoneInfo(tz))
    return datetime.combine(local.date(), time(0), tzinfo=local.tzinfo).astimezone(UTC)


# -- the model -------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Msg:
    """A message row the model expects to be unfinished: queued, held, deferred, or claimed by a killed worker."""

    campaign: str
    step: str
    index: int
    not_before: datetime
    attempts: int = 0
    first_attempt: datetime | None = None
    dead: bool = False  # claimed by a worker that was killed: it waits for that worker's lease
    expired: bool = False  # ... and that lease has run out
    handed: bool = False  # that worker had handed it to the server: the one duplicate the docs allow
    extra: bool = False  # a continued reader's direct signup queued this welcome outside the sequence


@dataclass(eq=False)
class Enr:
    campaign: str
    place: int = 0  # index of the next step
    status: str = "active"
    due: datetime | None = None  # when `place` is due, while no message of it exists
    basis: datetime | None = None  # what that due time counts from: the last send, a switch, the join
    last_sent: datetime | None = None
    msg: Msg | None = None
    extra: Msg | None = None
    origin: str | None = None
    done: set[str] = field(default_factory=set)  # steps finished in any way (sent, failed, cancelled)


@dataclass(eq=False)
class Reader:
    email: str
    name: str
    tz: str | None  # the zone their browser reports, and the one stored for them
    exists: bool = False
    generation: int = 0  # a new subscriber row (and public id) after an unconfirmed signup expired
    status: str = "active"
    snoozed_until: datetime | None = None
    enrollments: dict[str, Enr] = field(default_factory=dict)
    counted: dict[tuple[str, str], datetime] = field(default_factory=dict)  # what the daily cap counts
    armed: str | None = None  # "hard" or "soft": the server refuses their next RCPT so
    pending: datetime | None = None  # double opt-in: when the last confirmation email was granted
    confirm_due: bool = False
    confirm_path: tuple[int, str] | None = None  # (generation, path) from the last confirmation email
    # A reader who unsubscribed and signs up again: their pending "come back?" signups by campaign (when
    # last granted), how many of those emails the next pass owes, and when they first unsubscribed.
    comebacks: dict[str, datetime] = field(default_factory=dict)
    comeback_due: set[str] = field(default_factory=set)
    left_at: datetime | None = None
    got: Counter = field(default_factory=Counter)  # (campaign, step) -> emails that arrived
    unsubscribe_url: str | None = None

    def messages(self) -> list[tuple[Enr, Msg]]:
        return [(e, m) for e in self.enrollments.values() for m in (e.msg, e.extra) if m is not None]


# -- the world one test function shares across examples -------------------------------------------------
class Clock:
    """The simulation's clock; the web layer reads it instead of the real one (see `web_reads`)."""

    now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def web_reads(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The web layer's `utcnow` becomes the simulation's clock, so a signup, a snooze or an unsubscribe happens
    at the simulated moment, as in production where the request's clock and the dispatcher's are one. Leases
    stay on the real clock (the dispatcher's `real_clock`), as the service has it."""
    for info in pkgutil.iter_modules(service.web.__path__):
        module = importlib.import_module(f"service.web.{info.name}")
        if getattr(module, "utcnow", None) is utcnow:
            monkeypatch.setattr(module, "utcnow", clock)


def simulation_templates(tmp_path: Path) -> Path:
    """The shipped campaigns, with the two options they do not use switched on where the model can see them:
    double opt-in for the glute guide (as tests/test_double_opt_in.py does) and weekdays for the newsletter."""
    root = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", root)
    doi = root / DOI / "campaign.toml"
    doi.write_text(doi.read_text().replace("send_hour = 9\n", "send_hour = 9\ndouble_opt_in = true\n", 1))
    news = root / NEWS / "campaign.toml"
    weekdays = 'send_hour = 9\nsend_days = ["tue", "thu", "sat"]\n'
    news.write_text(news.read_text().replace("send_hour = 9\n", weekdays, 1))
    return root


@dataclass
class World:
    backend: str
    request: pytest.FixtureRequest
    smtp: SmtpServer
    tmp: Path
    clock: Clock
    templates: Path
    examples: int = 0

    def fresh_database(self) -> str:
        """A migrated, empty database per example, made the way conftest's `database_url` makes one per test."""
        self.examples += 1
        if self.backend == "sqlite":
            for old in self.tmp.glob("sim-*.sqlite3*"):
                old.unlink()
            path = self.tmp / f"sim-{self.examples}.sqlite3"
            shutil.copy(self.request.getfixturevalue("sqlite_template"), path)
            return f"sqlite:///{path}"
        return emptied(self.request.getfixturevalue("postgres_database"))

    def settings(self, url: str, templates: Path) -> Settings:
        return Settings(database_url=url, email_url=self.smtp.url, base_url=BASE, secret_key="simulation-" + "k" * 32,
                        postal_address="Back Pain Warriors, 12 Test Street, Springfield",
                        instance_dir=self.tmp / "instance", signup_rate_limit=None, signup_address_rate_limit=None,
                        templates_dir=templates, postmark_webhook_user=POSTMARK[0],
                        postmark_webhook_password=POSTMARK[1])


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


class Simulation(RuleBasedStateMachine):
    world: World  # set by the test function that runs the machine

    def __init__(self) -> None:
        super().__init__()
        self.w = type(self).world
        handler = self.w.smtp.handler
        with handler.lock:
            handler.accepted.clear()
            handler._script.clear()  # a refusal scripted in an earlier example must not leak into this one
        self.url = self.w.fresh_database()
        self.rt = None
        self.real_offset = timedelta(0)
        self.readers: list[Reader] = []
        self.paused: set[str] = set()
        self.edits = 0
        self.seen = 0
        self.provider_ids = itertools.count(1)
        self.workers = itertools.count(1)
        self.templates = self.w.templates
        self.boot(self.templates)

    # -- plumbing ----------------------------------------------------------------------------------------
    def boot(self, templates: Path) -> None:
        """The service as deployed with these campaign files: runtime, web app and one long-lived dispatcher."""
        if self.rt is not None:
            self.rt.sessions.kw["bind"].dispose()
        self.rt = build_runtime(self.w.settings(self.url, templates))
        app = create_app(runtime=self.rt)
        app.config["TESTING"] = True
        self.client = app.test_client()
        self.dispatcher = self.rt.dispatcher(real_clock=self.real_now)
        self.campaigns = self.rt.campaigns
        self.reactivate = True  # the first pass of a worker that loaded new files reactivates finished readers

    def teardown(self) -> None:
        self.rt.sessions.kw["bind"].dispose()
        for folder in self.w.tmp.glob(f"templates-{self.w.examples}-*"):  # this example's edited campaigns
            shutil.rmtree(folder)

    def real_now(self) -> datetime:
        # Leases run on the real clock, which moves on with the simulation's time instead of sleeping.
        return utcnow() + self.real_offset

    @property
    def now(self) -> datetime:
        return self.w.clock.now

    def pick(self, who: int, among: list[Reader] | None = None) -> Reader:
        pool = self.readers if among is None else among
        return pool[who % len(pool)]

    def zone(self, reader: Reader, campaign: str) -> str:
        return reader.tz or self.campaigns[campaign].timezone

    def snoozed(self, reader: Reader, t: datetime) -> bool:
        return reader.snoozed_until is not None and reader.snoozed_until > t

    def public_id(self, reader: Reader) -> str:
        with self.rt.sessions() as s:
            return s.scalars(select(Subscriber.public_id).where(Subscriber.email_key == reader.email)).one()

    def message_rows(self) -> dict[tuple[str, str, str], object]:
        with self.rt.sessions() as s:
            rows = s.execute(select(Message.id, Subscriber.email_key, Message.campaign, Message.step_key,
                                    Message.status, Message.attempts, Message.next_attempt_at, Message.claimed_by)
                             .join(Subscriber, Subscriber.id == Message.subscriber_id)).all()
        return {(r.email_key, r.campaign, r.step_key): r for r in rows}

    def snapshot(self, reader: Reader) -> tuple:
        """Every row of every other reader: a reader's own action must leave all of them as they were."""
        other = Subscriber.email_key != reader.email
        with self.rt.sessions() as s:
            return tuple(
                s.execute(select(*table.c).join(Subscriber, Subscriber.id == table.c.subscriber_id).where(other)
                          .order_by(table.c.id)).all()
                for table in (Enrollment.__table__, Message.__table__, PendingConfirmation.__table__)
            ) + (s.execute(select(*Subscriber.__table__.c).where(other).order_by(Subscriber.id)).all(),)

    def arrivals(self) -> tuple[Counter, Counter]:
        """Emails the server accepted since the last look: (drip emails by (address, campaign, step),
        confirmation emails by address). Remembers each reader's latest unsubscribe and confirm links."""
        handler = self.w.smtp.handler
        with handler.lock:
            fresh = handler.accepted[self.seen:]
            self.seen = len(handler.accepted)
        by_address = {r.email: r for r in self.readers}
        drip, confirmations = Counter(), Counter()
        for _sender, rcpts, raw in fresh:
            assert len(rcpts) == 1, rcpts
            reader = by_address[rcpts[0].lower()]
            message = parse(raw)
            if message["Feedback-ID"] is None and message["Subject"] == COMEBACK_SUBJECT:
                confirmations[reader.email] += 1  # its link is not followed by the model
                continue
            if message["Feedback-ID"] is None:  # the double opt-in confirmation: transactional, no campaign step
                assert message["Subject"] == self.campaigns[DOI].confirm_subject
                body = message.get_body(("plain",)).get_content()
                path = re.search(re.escape(BASE) + r"(/confirm/[A-Za-z0-9_.\-]+)", body).group(1)
                reader.confirm_path = (reader.generation, path)
                confirmations[reader.email] += 1
                continue
            campaign, step, _sender_id = str(message["Feedback-ID"]).split(":")
            drip[(reader.email, campaign, step)] += 1
            reader.unsubscribe_url = re.search(r"<(https://[^>]+)>", str(message["List-Unsubscribe"])).group(1)
        return drip, confirmations

    def script_left(self, reader: Reader) -> bool:
        handler = self.w.smtp.handler
        with handler.lock:
            return bool(handler._script.get((reader.email, "RCPT")))

    # -- model: joining, leaving, moving on --------------------------------------------------------------
    def enroll(self, reader: Reader, campaign: str) -> None:
        """A new enrollment: its welcome is due at once."""
        reader.enrollments[campaign] = Enr(campaign, due=self.now, basis=self.now)

    def finish(self, e: Enr, m: Msg) -> None:
        if e.msg is m:
            e.msg = None
        if e.extra is m:
            e.extra = None
        e.done.add(m.step)

    def cancel(self, e: Enr, claimed: tuple[Msg, ...] = ()) -> None:
        """An enrollment stops: its queued and deferred mail is cancelled. A claimed email is not (the re-check
        just before sending drops it), whether a killed worker or the pass under way holds it."""
        e.status, e.due = "stopped", None
        for m in (e.msg, e.extra):
            if m is not None and not m.dead and m not in claimed:
                self.finish(e, m)

    def stop_reader(self, reader: Reader, status: str, claimed: tuple[Msg, ...] = ()) -> None:
        reader.status = status
        # docs/reader.md: leaving voids every signup still waiting for its click (a later signup asks anew)
        reader.pending, reader.confirm_due, reader.comebacks, reader.comeback_due = None, False, {}, set()
        if status == "unsubscribed" and reader.left_at is None:
            reader.left_at = self.now
        for e in reader.enrollments.values():
            if e.status == "active":
                self.cancel(e, claimed)

    def advance(self, reader: Reader, e: Enr, index: int, t: datetime) -> None:
        """A step was sent (or given up) at `t`: the next is due its delay after that, or the campaign is done."""
        if e.status != "active":
            return
        campaign = self.campaigns[e.campaign]
        e.place, e.last_sent = index + 1, t
        nxt = campaign.step(e.place)
        if nxt is None:
            e.status, e.due = "completed", None
            self.continue_into(reader, campaign, e, t)
        else:
            e.basis, e.due = t, calendar(campaign, nxt, t, self.zone(reader, e.campaign))

    def continue_into(self, reader: Reader, campaign, e: Enr, t: datetime) -> None:
        if not campaign.continue_into or reader.status != "active" or campaign.continue_into in reader.enrollments:
            return
        target = self.campaigns[campaign.continue_into]
        step = target.step_by_key(campaign.continue_at) or target.steps[0]
        reader.enrollments[target.key] = Enr(target.key, place=step.index, basis=t, origin=e.origin or campaign.key,
                                             due=calendar(target, step, t, self.zone(reader, target.key)))

    def sent(self, reader: Reader, e: Enr, m: Msg, t: datetime) -> None:
        reader.got[(m.campaign, m.step)] += 1
        assert reader.got[(m.campaign, m.step)] <= 1 + m.handed, \
            f"{reader.email} got {m.campaign}/{m.step} {reader.got[(m.campaign, m.step)]} times"
        if m.index != 0:
            reader.counted[(m.campaign, m.step)] = t
        self.finish(e, m)
        if not m.extra:
            self.advance(reader, e, m.index, t)
        elif e.status == "active":
            # docs/campaigns.md: the continued reader's place is kept; the next step is due its delay after
            # this welcome (unless that step's email is already on its way).
            e.last_sent = t
            step = self.campaigns[e.campaign].step(e.place)
            if e.msg is None and step is not None:
                e.basis, e.due = t, calendar(self.campaigns[e.campaign], step, t, self.zone(reader, e.campaign))

    def reschedule(self, reader: Reader) -> None:
        """docs/reader.md: a new zone recomputes every pending due time from what it counts from, in the new zone."""
        for e in reader.enrollments.values():
            step = self.campaigns[e.campaign].step(e.place)
            if e.status == "active" and e.msg is None and e.due is not None and step is not None:
                e.due = calendar(self.campaigns[e.campaign], step, e.basis, self.zone(reader, e.campaign))

    def forget(self, reader: Reader) -> None:
        """An address that confirmed nothing is deleted when its pending signup expires (docs/campaigns.md)."""
        assert not reader.enrollments
        fresh = Reader(reader.email, reader.name, reader.tz, generation=reader.generation + 1, armed=reader.armed)
        vars(reader).update(vars(fresh))

    # -- model: one dispatch pass ------------------------------------------------------------------------
    def reactivate_grown(self, t: datetime) -> None:
        """docs/campaigns.md: an appended step reaches readers who had completed, due its delay after their
        last send, at the first pass of a worker that loaded the new file."""
        for reader in self.readers:
            if not reader.exists or reader.status != "active":
                continue
            for e in reader.enrollments.values():
                campaign = self.campaigns[e.campaign]
                last = campaign.steps[-1].key
                known = [campaign.step_by_key(k).index for k in e.done if campaign.step_by_key(k) is not None]
                if e.status != "completed" or last in e.done or not known:
                    continue
                step = campaign.step(max(known) + 1)
                if step is not None:
                    e.status, e.place, e.basis = "active", step.index, e.last_sent or t
                    e.due = calendar(campaign, step, e.basis, self.zone(reader, e.campaign))

    def expected_confirmations(self, t: datetime) -> Counter:
        out = Counter()
        for reader in self.readers:
            if reader.pending is not None and reader.pending < t - EXPIRY:
                reader.pending, reader.confirm_due = None, False
                if not reader.enrollments:
                    self.forget(reader)
            if reader.exists and reader.confirm_due and reader.status == "active":
                out[reader.email] += 1
                reader.confirm_due = False
            reader.comebacks = {c: when for c, when in reader.comebacks.items() if when >= t - EXPIRY}
            reader.comeback_due &= set(reader.comebacks)  # an expired pending signup is deleted unsent
            if reader.comeback_due and reader.status == "unsubscribed":  # bounced or complained since: none
                out[reader.email] += len(reader.comeback_due)
            reader.comeback_due = set()
        return out

    def queue(self, t: datetime) -> set[tuple[str, str, str]]:
        """Due enrollments of readers who are not snoozed, in campaigns not paused, get their step's message."""
        queued = set()
        for reader in self.readers:
            if not reader.exists or self.snoozed(reader, t):
                continue
            for e in list(reader.enrollments.values()):
                if e.status != "active" or e.msg is not None or e.due is None or e.due > t or e.campaign in self.paused:
                    continue
                step = self.campaigns[e.campaign].step(e.place)
                if step is None:
                    e.status, e.due = "completed", None
                    self.continue_into(reader, self.campaigns[e.campaign], e, t)
                    continue
                e.msg, e.due = Msg(e.campaign, step.key, step.index, t), None
                queued.add((reader.email, e.campaign, step.key))
        return queued

    def claimable(self, reader: Reader, m: Msg, t: datetime) -> bool:
        if m.campaign in self.paused or self.snoozed(reader, t):
            return False
        return m.expired if m.dead else m.not_before <= t

    def why_waiting(self, reader: Reader, m: Msg, t: datetime) -> str:
        if m.campaign in self.paused:
            return f"{m.campaign} is paused"
        if self.snoozed(reader, t):
            return f"the reader is snoozed until {reader.snoozed_until}"
        if m.dead:
            return "a killed worker's lease still holds it"
        return f"it is not due before {m.not_before}"

    def counted_today(self, reader: Reader, t: datetime) -> int:
        midnight = local_midnight(t, reader.tz or self.campaigns[BUNDLE].timezone)
        return sum(midnight <= when <= t for when in reader.counted.values())

    def settle(self, t: datetime, before: dict, after: dict, drip: Counter | None, *, worker: str | None) -> None:
        """The claim and its outcomes, reader by reader: what was attempted must have been claimable, everything
        claimable that the rules do not hold back must have been attempted, and each outcome must be the one
        the reader's mailbox (a scripted refusal or none) gives. `worker` names a killed worker's claim."""
        expected_drip = Counter()
        for reader in self.readers:
            keyed = {(reader.email, m.campaign, m.step): (e, m) for e, m in reader.messages()}
            attempted = sorted((k for k, row in after.items() if k[0] == reader.email
                                and row.attempts > (before[k].attempts if k in before else 0)),
                               key=lambda k: after[k].id)
            for k in attempted:
                assert k in keyed, f"{k} was attempted at {t}, but the model expects no such message"
                assert self.claimable(reader, keyed[k][1], t), \
                    f"{k} was attempted at {t}, but {self.why_waiting(reader, keyed[k][1], t)}"
            claimable = [k for k, (_e, m) in keyed.items() if self.claimable(reader, m, t)]
            free = [k for k in claimable if keyed[k][1].dead or keyed[k][1].index == 0]
            capped = [k for k in claimable if k not in free]
            missing = [k for k in free if k not in attempted]
            assert not missing, f"{missing} were due at {t} (welcome, or a killed worker's expired lease) but waited"
            room = max(0, CAP - self.counted_today(reader, t))
            chosen = [k for k in attempted if k in capped]
            assert len(chosen) == min(room, len(capped)), \
                f"{reader.email} at {t}: {len(chosen)} of {capped} attempted with room for {room} under the daily cap"
            if chosen:
                first = min(keyed[k][1].not_before for k in capped)
                assert keyed[chosen[0]][1].not_before == first, f"{chosen[0]} went before an earlier held email"
            for k in capped:
                if k not in chosen:  # held by the daily cap: the next allowed day at the step's send hour
                    e, m = keyed[k]
                    campaign = self.campaigns[m.campaign]
                    m.not_before = hold_until(campaign, campaign.step_by_key(m.step), t, self.zone(reader, m.campaign))
                    assert after[k].next_attempt_at == m.not_before, (k, after[k].next_attempt_at, m.not_before)
            self.outcomes(reader, t, [(k, *keyed[k]) for k in attempted], after, expected_drip, worker)
            if worker is None:
                assert self.script_left(reader) == (reader.armed is not None), reader
        if drip is not None:
            assert drip == expected_drip, f"arrived {dict(drip)}, expected {dict(expected_drip)}"

    def outcomes(self, reader: Reader, t: datetime, attempted: list, after: dict, expected: Counter,
                 worker: str | None) -> None:
        reached_rcpt, bounced = False, False
        claimed = tuple(m for _k, _e, m in attempted)
        for k, e, m in attempted:
            row = after[k]
            assert row.attempts == m.attempts + 1, (k, row.attempts, m.attempts)
            m.attempts, m.first_attempt = row.attempts, m.first_attempt or t
            if worker is not None:  # the killed worker claimed it: `sending` under its name, counted by the cap
                assert (row.status, row.claimed_by) == ("sending", worker), (k, row.status, row.claimed_by)
                m.dead, m.expired = True, False
                if m.index != 0:
                    reader.counted[(m.campaign, m.step)] = t
                continue
            if m.dead:
                with self.rt.sessions() as s:
                    history = set(s.scalars(select(Event.type).where(Event.message_id == row.id)))
                assert "reclaimed" in history, f"{k} was taken over after a lease without a `reclaimed` event"
                m.dead = False
            reader.counted.pop((m.campaign, m.step), None)
            if row.status == "suppressed":  # dropped by the re-check just before sending
                assert bounced or reader.status != "active" or e.status == "stopped", f"{k} suppressed for no reason"
                self.finish(e, m)
                continue
            refusal = reader.armed if not reached_rcpt else None
            reached_rcpt = True
            if refusal is not None:
                reader.armed = None
            if row.status == "sent":
                assert refusal is None, f"{k} was accepted though the server refused it ({refusal})"
                expected[k] += 1
                self.sent(reader, e, m, t)
            elif row.status == "bounced":
                assert refusal == "hard", f"{k} bounced with no 5.1.1 refusal"
                bounced = True
                self.finish(e, m)
                # docs/design.md: a hard bounce suppresses the address and stops every enrollment, at once: an
                # email of this pass recorded after it (the outcomes are written in send order) changes nothing.
                self.stop_reader(reader, "bounced", claimed)
            elif row.status in ("deferred", "failed"):
                assert refusal == "soft", f"{k} {row.status} with no 4xx refusal"
                exhausted = m.attempts >= self.rt.settings.max_attempts or t - m.first_attempt >= timedelta(days=3)
                assert (row.status == "failed") == exhausted, (k, row.status, m.attempts, m.first_attempt)
                if exhausted:
                    self.finish(e, m)
                    self.advance(reader, e, m.index, t)
                else:  # docs/design.md: retry after min(6 h, 60 s * 2^(attempts-1)), +-20 %
                    s = self.rt.settings
                    raw = timedelta(seconds=min(s.retry_cap_seconds, s.retry_base_seconds * 2 ** (m.attempts - 1)))
                    slack = timedelta(seconds=1)
                    assert t + raw * 0.8 - slack <= row.next_attempt_at <= t + raw * 1.2 + slack, (k, row)
                    m.not_before = row.next_attempt_at
            else:
                raise AssertionError(f"{k} ended {row.status}")

    def pass_now(self) -> None:
        t = self.now
        before = self.message_rows()
        self.dispatcher.run_pass(t)
        after = self.message_rows()
        drip, confirmations = self.arrivals()
        if self.reactivate:
            self.reactivate_grown(t)
            self.reactivate = False
        assert confirmations == self.expected_confirmations(t), f"confirmation emails at {t}: {dict(confirmations)}"
        queued = self.queue(t)
        assert set(after) - set(before) == queued, \
            f"queued at {t}: {sorted(set(after) - set(before))}, the model says {sorted(queued)}"
        self.settle(t, before, after, drip, worker=None)

    # -- rules: readers ----------------------------------------------------------------------------------
    @initialize(start=st.sampled_from(STARTS),
                zones=st.lists(st.sampled_from(ZONES), min_size=5, max_size=MAX_READERS),
                joins=st.lists(st.lists(st.sampled_from(SIGNUP_CAMPAIGNS), max_size=3), min_size=MAX_READERS,
                               max_size=MAX_READERS))
    def readers_arrive(self, start: str, zones: list, joins: list) -> None:
        """5-30 readers in their zones; most sign up at once for up to three campaigns."""
        self.w.clock.now = at(start)
        self.readers = [Reader(f"reader{i}@example.org", f"Reader {i}", zone) for i, zone in enumerate(zones)]
        for reader, campaigns in zip(self.readers, joins, strict=False):
            for campaign in campaigns:
                self.join(reader, campaign, as_json=False)

    @rule(who=READER, campaign=st.sampled_from(SIGNUP_CAMPAIGNS), as_json=st.booleans())
    def sign_up(self, who: int, campaign: str, as_json: bool) -> None:
        reader = self.pick(who)
        if reader.armed and (campaign == DOI or reader.status == "unsubscribed"):
            # the scripted refusal would meet the confirmation (or come-back) email, which the model does not follow
            return
        self.join(reader, campaign, as_json=as_json)

    def join(self, reader: Reader, campaign: str, *, as_json: bool) -> None:
        """The signup webhook, as a browser form (303) or a JSON caller (201 new, 200 otherwise)."""
        others = self.snapshot(reader)
        fields = {"email": reader.email, "name": reader.name, "campaign": campaign}
        if reader.tz:
            fields["timezone"] = reader.tz  # the browser's zone, as the form's hidden field sends it
        r = self.client.post("/signup", json=fields) if as_json else self.client.post("/signup", data=fields)
        expected = self.model_join(reader, campaign)
        if as_json:
            assert (r.status_code, r.get_json()["status"]) == expected, (reader.email, campaign, r.get_json())
        else:
            assert r.status_code == 303, r.data[:300]
        assert self.snapshot(reader) == others

    def model_join(self, reader: Reader, campaign: str) -> tuple[int, str]:
        if not reader.exists:
            reader.exists = True
        elif reader.status == "unsubscribed":  # docs/reader.md: a "come back?" email; only its link re-enrols
            last = reader.comebacks.get(campaign, reader.pending if campaign == DOI else None)
            if last is None or last <= reader.left_at or self.now - last >= COOLDOWN:
                reader.comebacks[campaign] = self.now
                reader.comeback_due.add(campaign)  # one row per campaign: one email however often granted
            elif campaign not in reader.comebacks:  # the double opt-in row within its cooldown, kept as it was
                reader.comebacks[campaign] = last
            if campaign == DOI:  # one pending row per reader and campaign: the come-back one now
                reader.pending, reader.confirm_due = None, False
            return 200, "confirmation_sent"
        elif reader.status != "active":  # bounced or complained: never mailed again
            return 200, "not_subscribed"
        if campaign == DOI:
            if DOI in reader.enrollments:
                return 200, "subscribed"
            if reader.pending is None or self.now - reader.pending >= COOLDOWN:
                reader.pending, reader.confirm_due = self.now, True
            return 200, "confirmation_sent"
        e = reader.enrollments.get(campaign)
        if e is None:
            self.enroll(reader, campaign)
            return 201, "subscribed"
        if e.origin is not None and e.status != "stopped":  # continued here earlier: the welcome, once
            e.extra, e.origin = Msg(campaign, self.campaigns[campaign].steps[0].key, 0, self.now, extra=True), None
        return 200, "subscribed"

    @precondition(lambda self: any(r.confirm_path for r in self.readers))
    @rule(who=READER)
    def confirm(self, who: int) -> None:
        reader = self.pick(who, [r for r in self.readers if r.confirm_path])
        generation, path = reader.confirm_path
        if reader.status == "unsubscribed" and DOI in reader.comebacks:
            return  # the link would bring them back (they asked to): the model does not follow come-backs
        others = self.snapshot(reader)
        r = self.client.post(path)
        if not reader.exists or generation != reader.generation:
            expected = 410
        elif reader.status != "active":
            expected = 409
        elif reader.pending is not None:
            reader.pending, reader.confirm_due = None, False
            self.enroll(reader, DOI)
            expected = 200
        else:
            expected = 200 if DOI in reader.enrollments else 410
        assert r.status_code == expected, (reader.email, r.status_code)
        assert self.snapshot(reader) == others

    @rule(who=READER, action=st.sampled_from(PREFERENCES))
    def preference_page(self, who: int, action: str) -> None:
        reader = self.pick(who)
        if not reader.exists:
            return
        verb, _, arg = action.partition(":")
        path = self.rt.reader_links(self.public_id(reader), 0)["preferences_url"].removeprefix(BASE)
        post = {"snooze": ("snooze", {"weeks": arg}), "resume": ("snooze", {"weeks": "0"}),
                "leave": ("leave", {"campaign": arg}), "digest": ("digest", {"campaign": BUNDLE}),
                "zone": ("profile", {"name": reader.name, "timezone": arg})}[verb]
        others = self.snapshot(reader)
        r = self.client.post(f"{path}/{post[0]}", data=post[1], headers=SITE)
        assert r.status_code == self.model_preference(reader, verb, arg), (reader.email, action, r.status_code)
        assert self.snapshot(reader) == others

    def model_preference(self, reader: Reader, verb: str, arg: str) -> int:
        if reader.status != "active":
            return 409
        now = self.now
        if verb == "snooze":
            reader.snoozed_until = now + timedelta(weeks=int(arg))
        elif verb == "resume":
            if self.snoozed(reader, now):
                reader.snoozed_until = None
        elif verb in ("leave", "digest"):
            e = reader.enrollments.get(arg if verb == "leave" else BUNDLE)
            if e is None or e.status != "active":
                return 400
            self.cancel(e)
            if verb == "digest":
                self.join_digest(reader, now)
        elif verb == "zone" and (arg or None) != reader.tz:
            reader.tz = arg or None
            self.reschedule(reader)
        return 303

    def join_digest(self, reader: Reader, now: datetime) -> None:
        """docs/reader.md: the digest starts after its welcome, one digest delay after the switch; a digest the
        reader had left restarts where it stopped (never before its second step)."""
        news = self.campaigns[NEWS]
        e = reader.enrollments.get(NEWS)
        if e is None:
            reader.enrollments[NEWS] = Enr(NEWS, place=1, basis=now, due=calendar(news, news.steps[1], now,
                                                                                 self.zone(reader, NEWS)))
        elif e.status != "active":
            pointer = max(e.place, 1)
            known = [news.step_by_key(k).index for k in e.done if news.step_by_key(k) is not None]
            e.status, e.place, e.basis = "active", max(known) + 1 if known else pointer, now
            resume = news.step(pointer)
            e.due = calendar(news, resume, now, self.zone(reader, NEWS)) if resume is not None else now

    @precondition(lambda self: any(r.unsubscribe_url for r in self.readers))
    @rule(who=READER, complaint=st.booleans())
    def reader_opts_out(self, who: int, complaint: bool) -> None:
        """A reader who got an email leaves: one-click unsubscribe, or a spam complaint through a webhook."""
        if complaint:
            self.complaint_webhook(who)
        else:
            self.one_click_unsubscribe(who)

    def one_click_unsubscribe(self, who: int) -> None:
        """RFC 8058: the mailbox provider POSTs to the https URL of the List-Unsubscribe header."""
        reader = self.pick(who, [r for r in self.readers if r.unsubscribe_url])
        others = self.snapshot(reader)
        r = self.client.post(reader.unsubscribe_url.removeprefix(BASE), data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 200
        if reader.status == "active":
            self.stop_reader(reader, "unsubscribed")
        assert self.snapshot(reader) == others

    def complaint_webhook(self, who: int) -> None:
        """A Postmark spam complaint about the reader's latest email."""
        reader = self.pick(who, [r for r in self.readers if r.got])
        with self.rt.sessions() as s:
            message_id = s.scalars(select(Message.id).join(Subscriber, Subscriber.id == Message.subscriber_id)
                                   .where(Subscriber.email_key == reader.email, Message.sent_at.is_not(None))
                                   .order_by(Message.sent_at.desc(), Message.id.desc())).first()
        body = {"RecordType": "SpamComplaint", "ID": next(self.provider_ids), "Type": "SpamComplaint",
                "TypeCode": 512, "MessageID": f"sim-{message_id}", "Email": reader.email, "Description": "spam"}
        if message_id is not None:  # none recorded as sent yet: the killed worker's email, found by address
            body["Metadata"] = {"drip_message": str(message_id)}
        others = self.snapshot(reader)
        r = self.client.post("/webhooks/postmark", json=body, auth=POSTMARK)
        assert (r.status_code, r.get_json().get("applied")) == (200, 1), r.get_json()
        if reader.status != "complained":  # docs/providers.md: a complaint stops the reader, whatever they were
            self.stop_reader(reader, "complained")
        assert self.snapshot(reader) == others

    @rule(who=READER, hard=st.booleans())
    def mailbox_refuses_next(self, who: int, hard: bool) -> None:
        """The reader's mail server refuses the next email at RCPT: 550 5.1.1 (hard) or 451 4.3.0 (soft)."""
        reader = self.pick(who)
        if reader.armed or reader.confirm_due or reader.comeback_due:
            return  # one refusal at a time, and never one a confirmation email would meet
        self.w.smtp.handler.script(reader.email, "RCPT", "550 5.1.1 no such user" if hard else
                                   "451 4.3.0 try again later")
        reader.armed = "hard" if hard else "soft"

    # -- rules: time, the dispatcher, the operator ------------------------------------------------------
    # Three rules for time, so that it moves about as often as readers act: hours, days and weeks pass with
    # up to three dispatch passes spread over them (none: the service was down all that time).
    @rule(hours=st.integers(1, 23), passes=st.integers(0, 3))
    def hours_pass(self, hours: int, passes: int) -> None:
        self.time_passes(timedelta(hours=hours), passes)

    @rule(days=st.integers(1, 6), passes=st.integers(0, 3))
    def days_pass(self, days: int, passes: int) -> None:
        self.time_passes(timedelta(days=days), passes)

    @rule(weeks=st.integers(1, 4), passes=st.integers(0, 3))
    def weeks_pass(self, weeks: int, passes: int) -> None:
        self.time_passes(timedelta(weeks=weeks), passes)

    def time_passes(self, delay: timedelta, passes: int) -> None:
        for _ in range(max(passes, 1)):
            step = delay / max(passes, 1)
            self.w.clock.now = self.now + step
            # The real clock moves too (by at least an hour here): a killed worker's five-minute lease runs out.
            self.real_offset += step
            for reader in self.readers:
                for _e, m in reader.messages():
                    m.expired = m.expired or m.dead
            if passes:
                self.pass_now()

    @rule()
    def dispatch_pass(self) -> None:
        self.pass_now()

    @rule(campaign=st.sampled_from(PAUSABLE), paused=st.booleans())
    def operator_pauses(self, campaign: str, paused: bool) -> None:
        with self.rt.sessions() as s, s.begin():
            set_paused(s, campaign, paused, now=self.now)
        (self.paused.add if paused else self.paused.discard)(campaign)

    @precondition(lambda self: self.edits < 2)
    @rule(campaign=st.sampled_from(sorted(GROWABLE)))
    def operator_appends_step(self, campaign: str) -> None:
        """A live edit deployed: the campaign file gains a last step and the service restarts with it."""
        self.edits += 1
        folder = self.w.tmp / f"templates-{self.w.examples}-{self.edits}"
        shutil.copytree(self.templates, folder)
        toml = folder / campaign / "campaign.toml"
        template, delay = GROWABLE[campaign]
        toml.write_text(toml.read_text() + f'\n[[steps]]\nkey = "extra-{self.edits}"\ndelay = "{delay}"\n'
                        f'subject = "One more note from Sofia, number {self.edits}"\ntemplate = "{template}"\n')
        self.templates = folder
        self.boot(folder)

    @precondition(lambda self: self.readers and not any(m.dead for r in self.readers for _e, m in r.messages()))
    @rule(handed=st.booleans())
    def worker_killed(self, handed: bool) -> None:
        """Another worker queues and claims what is due, then dies: before sending anything, or (`handed`)
        after the server accepted the emails and before it recorded that."""
        t, name = self.now, f"killed-worker-{next(self.workers)}"
        dead = self.rt.dispatcher(real_clock=self.real_now, worker_id=name)
        before = self.message_rows()
        summary = PassSummary()
        dead.queue_due(t, summary)
        ids = dead.claim(t, summary)
        after = self.message_rows()
        queued = self.queue(t)
        assert set(after) - set(before) == queued, (sorted(set(after) - set(before)), sorted(queued))
        self.settle(t, before, after, None, worker=name)
        expected = Counter()
        if handed and ids:
            by_id = {row.id: key for key, row in after.items()}
            armed = {r.email for r in self.readers if r.armed}
            # A refusal scripted for a reader would be spent on an email whose outcome nobody records.
            jobs = SendRun(dead).prepare([i for i in ids if by_id[i][0] not in armed], t, summary)
            transport = make_transport(self.rt.settings.email_url)
            try:
                results = list(transport.send(iter([self.rt.composer.compose(job) for job in jobs])))
            finally:
                transport.close()
            assert all(result.ok for result in results), results
            readers = {r.email: r for r in self.readers}
            for job in jobs:
                key = by_id[job.message_pk]
                reader = readers[key[0]]
                m = next(m for _e, m in reader.messages() if (m.campaign, m.step) == key[1:])
                m.handed = True
                reader.got[key[1:]] += 1
                expected[key] += 1
        drip, confirmations = self.arrivals()
        assert (drip, confirmations) == (expected, Counter())

    # -- the database agrees with the model after every step --------------------------------------------
    @invariant()
    def database_agrees(self) -> None:
        if not self.readers:
            return
        with self.rt.sessions() as s:
            subscribers = {r.email_key: r for r in s.execute(
                select(Subscriber.email_key, Subscriber.status, Subscriber.timezone, Subscriber.snoozed_until))}
            enrollments = {(r.email_key, r.campaign): r for r in s.execute(
                select(Subscriber.email_key, Enrollment.campaign, Enrollment.status, Enrollment.next_due_at)
                .join(Subscriber, Subscriber.id == Enrollment.subscriber_id))}
            unfinished = {(r.email_key, r.campaign, r.step_key): r for r in s.execute(
                select(Subscriber.email_key, Message.campaign, Message.step_key, Message.status,
                       Message.next_attempt_at)
                .join(Subscriber, Subscriber.id == Message.subscriber_id)
                .where(Message.status.in_(("queued", "deferred", "sending"))))}
            pending = set(s.scalars(select(Subscriber.email_key)
                                    .join(PendingConfirmation, PendingConfirmation.subscriber_id == Subscriber.id)))
        assert set(subscribers) == {r.email for r in self.readers if r.exists}
        expected_enrollments, expected_unfinished = {}, {}
        for reader in self.readers:
            if not reader.exists:
                continue
            row = subscribers[reader.email]
            assert (row.status, row.timezone, row.snoozed_until) == (reader.status, reader.tz, reader.snoozed_until), \
                (reader.email, row)
            for e in reader.enrollments.values():
                expected_enrollments[(reader.email, e.campaign)] = e
                for m in (e.msg, e.extra):
                    if m is not None:
                        expected_unfinished[(reader.email, m.campaign, m.step)] = m
        assert set(enrollments) == set(expected_enrollments), \
            f"enrollments {sorted(set(enrollments) ^ set(expected_enrollments))} differ from the model"
        for key, e in expected_enrollments.items():
            row = enrollments[key]
            assert row.status == e.status, (key, row.status, e.status)
            if e.status == "active" and e.msg is None:
                assert row.next_due_at == e.due, f"{key} is due at {row.next_due_at}, the model says {e.due}"
        assert set(unfinished) == set(expected_unfinished), \
            f"unfinished messages {sorted(set(unfinished) ^ set(expected_unfinished))} differ from the model"
        for key, m in expected_unfinished.items():
            row = unfinished[key]
            status = "sending" if m.dead else "deferred" if m.attempts else "queued"
            assert row.status == status, (key, row.status, status)
            if not m.dead:
                assert row.next_attempt_at == m.not_before, (key, row.next_attempt_at, m.not_before)
        assert pending == {r.email for r in self.readers if r.exists and (r.pending is not None or r.comebacks)}
        assert self.seen == len(self.w.smtp.handler.accepted), "an email arrived outside a dispatch pass"


def test_simulated_readers_get_what_the_model_says(backend: str, request: pytest.FixtureRequest, smtp: SmtpServer,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random readers, clock jumps, mailbox refusals, complaints, live edits and a killed worker, driven through
    the real service on this database: after every step the emails and the tables match the model."""
    clock = Clock()
    web_reads(clock, monkeypatch)
    Simulation.world = World(backend, request, smtp, tmp_path, clock, simulation_templates(tmp_path))
    run_state_machine_as_test(Simulation, settings=SIMULATION)


# -- regressions found with the simulation, each cut down to the smallest story (they fail until fixed) -------
def _signup(client, email: str, campaign: str) -> None:
    assert client.post("/signup", data={"email": email, "name": "Ada", "campaign": campaign}).status_code == 303


def _preferences(client, runtime, email: str, action: str, **form: str) -> None:
    with runtime.sessions() as s:
        public_id = s.scalars(select(Subscriber.public_id).where(Subscriber.email_key == email)).one()
    path = runtime.reader_links(public_id, 0)["preferences_url"].removeprefix(BASE)
    assert client.post(f"{path}/{action}", data=form, headers=SITE).status_code == 303


def _subjects(smtp: SmtpServer, email: str) -> list[str]:
    return [str(m["Feedback-ID"]).split(":")[1] for m in smtp.handler.messages(to=email)]


def test_a_continued_reader_who_moves_zone_gets_the_next_coaching_email_at_the_new_local_hour(
        client, runtime, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader who finished a lead magnet and was continued into the bundle moves from New York to Paris on the
    preference page before week-01: like every pending step (docs/reader.md), week-01 moves to 09:00 Paris."""
    clock = Clock()
    web_reads(clock, monkeypatch)
    clock.now = at("2026-05-04T14:00:00")  # a Monday, 10:00 in New York
    _signup(client, "ada@example.org", "plateau-14")  # its form promised coaching: it continues
    d = runtime.dispatcher()
    d.run_pass(clock.now)  # the lead magnet's welcome; it is complete, so she continues into the bundle at week-01
    assert _subjects(smtp, "ada@example.org") == ["welcome"]
    clock.now = at("2026-05-04T15:00:00")
    _preferences(client, runtime, "ada@example.org", "profile", name="Ada", timezone="Europe/Paris")
    # 09:05 in Paris a week later (07:05 UTC): week-01 is due at 09:00 Paris. Left in New York's zone by the
    # zone change (it skips enrollments that have not sent yet), it would wait until 09:00 New York, 15:00 Paris.
    d.run_pass(at("2026-05-11T07:05:00"))
    assert _subjects(smtp, "ada@example.org") == ["welcome", "week-01"]


def test_a_zone_change_after_returning_to_the_digest_keeps_its_first_email_a_month_away(
        client, runtime, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader left the monthly newsletter after its welcome, and weeks later switches from the weekly bundle
    back to it: its next email is due 30 days after the switch (docs/reader.md). Changing her zone then must
    move that email to the new zone's send hour, not recount it from her last newsletter email months ago."""
    clock = Clock()
    web_reads(clock, monkeypatch)
    clock.now = at("2026-05-04T14:00:00")
    _signup(client, "ada@example.org", NEWS)
    _signup(client, "ada@example.org", BUNDLE)
    d = runtime.dispatcher()
    d.run_pass(clock.now)  # both welcomes
    _preferences(client, runtime, "ada@example.org", "leave", campaign=NEWS)
    for day in range(1, 41):  # the bundle's weekly emails go on
        d.run_pass(clock.now + timedelta(days=day))
    clock.now = at("2026-06-13T14:00:00")  # 40 days on
    _preferences(client, runtime, "ada@example.org", "digest", campaign=BUNDLE)
    clock.now = at("2026-06-13T15:00:00")
    _preferences(client, runtime, "ada@example.org", "profile", name="Ada", timezone="Asia/Tokyo")
    # Recounted from her last newsletter email (May 4), month-01 would be due on June 3, already past: it would go
    # at the next pass, a month early.
    d.run_pass(at("2026-06-13T16:00:00"))
    assert "month-01" not in _subjects(smtp, "ada@example.org")
    with runtime.sessions() as s:
        due = s.scalars(select(Enrollment.next_due_at).join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
                        .where(Subscriber.email_key == "ada@example.org", Enrollment.campaign == NEWS)).one()
    assert due == at("2026-07-13T00:00:00")  # 30 days after the switch (June 13 in Tokyo), at 09:00 Tokyo
