"""What goes out in the next days: the dispatcher's own rules played forward over what the database holds now.

Nothing here decides anything the dispatcher does not: the next step's due time is `schedule.step_due`, a
paused campaign is `queue.paused_campaigns`, a snoozed reader waits until the snooze ends as `queue.not_snoozed`
makes them, a reader's daily cap is `claim.cap_room` / `claim.held_until`, a sending domain's hourly and daily
allowance is `send_limits.windows`, a lead magnet's last step leads into its sequence as in continuation.py.
`forecast` only reads: it writes no row.

Replaying costs about 130 microseconds per waiting reader: fine for a few thousand, about a minute at a million. So a
large list's forecast is computed by the worker in the background (`refresh`: at most every REFRESH_EVERY, and
within a minute of a campaign being published, paused or resumed, or sending paused or resumed) and stored as
counts per quarter hour, campaign and step; the console's home page and `drip forecast` read those and say when
they were computed. A list with at most INLINE_LIMIT emails waiting is still replayed for every request.

It assumes every email is accepted (a bounce or an unsubscribe tomorrow cannot be known today), that paused
campaigns stay paused and that no new reader signs up. While sending is paused, nothing goes out at all.
"""
from __future__ import annotations

import heapq
import itertools
import time as clock
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from service.campaigns.model import Campaign, Step
from service.campaigns.schedule import step_due
from service.core.models import (
    CampaignState,
    CampaignVersion,
    Enrollment,
    ForecastCount,
    ForecastRun,
    Message,
    SendCounter,
    SendingState,
    Subscriber,
)
from service.dispatch import send_limits
from service.dispatch.claim import cap_room, counts_toward_cap, held_until, recent_capped_sends, sending_domain
from service.dispatch.queue import paused_campaigns
from service.dispatch.sending_pause import paused_reason
from service.enrollment import live_edits

if TYPE_CHECKING:
    from service.dispatch.dispatcher import Dispatcher


@dataclass(frozen=True)
class Planned:
    """One email the schedule sends: to whom, which step, and when (UTC)."""

    at: datetime
    subscriber_id: int
    campaign: str
    step_key: str


@dataclass(frozen=True)
class ForecastRow:
    day: date  # in the time zone the forecast was grouped in
    campaign: str
    step_key: str
    subject: str
    count: int


@dataclass
class Forecast:
    start: datetime
    end: datetime
    emails: list[Planned] = field(default_factory=list)
    sending_paused: str | None = None  # why nothing goes out at all
    paused_campaigns: list[str] = field(default_factory=list)
    snoozed_readers: int = 0  # readers with mail waiting behind a snooze
    held_by_cap: int = 0  # emails moved to a later day by a reader's daily cap
    # Read from the stored forecast instead of replayed now: emails per (quarter-hour start, campaign, step),
    # and when the worker computed them. `not_ready`: a large list whose first forecast is not stored yet.
    slots: Counter | None = None
    computed_at: datetime | None = None
    not_ready: bool = False

    @property
    def total(self) -> int:
        return sum(self.slots.values()) if self.slots is not None else len(self.emails)

    def by_day(self, tz_name: str, campaigns: dict[str, Campaign]) -> list[tuple[date, list[ForecastRow]]]:
        """Per day in `tz_name` (the operator's zone), per campaign step; every day of the range, empty ones too."""
        tz = ZoneInfo(tz_name)
        if self.slots is not None:  # a quarter hour lies in one local day in every zone
            counts = Counter()
            for (at, c, k), n in self.slots.items():
                counts[(at.astimezone(tz).date(), c, k)] += n
        else:
            counts = Counter((p.at.astimezone(tz).date(), p.campaign, p.step_key) for p in self.emails)
        first, last = self.start.astimezone(tz).date(), (self.end - timedelta(microseconds=1)).astimezone(tz).date()
        days = []
        day = first
        while day <= last:
            rows = [ForecastRow(day, c, k, _subject(campaigns, c, k), n)
                    for (d, c, k), n in sorted(counts.items(), key=lambda kv: (kv[0][1], _index(campaigns, kv[0])))
                    if d == day]
            days.append((day, rows))
            day += timedelta(days=1)
        return days


def _subject(campaigns: dict[str, Campaign], campaign: str, step_key: str) -> str:
    c = campaigns.get(campaign)
    step = c.step_by_key(step_key) if c is not None else None
    return step.subject if step is not None else ""


def _index(campaigns: dict[str, Campaign], key: tuple[date, str, str]) -> int:
    c = campaigns.get(key[1])
    step = c.step_by_key(key[2]) if c is not None else None
    return step.index if step is not None else 0


def horizon(now: datetime, tz_name: str, days: int = 7) -> datetime:
    """The end of the `days`-th local day (today counts as the first) in `tz_name`, as UTC."""
    tz = ZoneInfo(tz_name)
    last = now.astimezone(tz).date() + timedelta(days=days)
    return datetime.combine(last, time(0), tzinfo=tz).astimezone(UTC)


# A reader's step waiting to go, as a plain tuple the heap compares in C: (when, source, sequence, reader,
# campaign key, step). Equal times go in the order the queue would see them: waiting messages by id, then due
# enrollments by id, then steps this forecast scheduled itself, in the order it did.
_Item = tuple[datetime, int, int, int, str, Step]
FROM_MESSAGE, FROM_ENROLLMENT, SCHEDULED = 0, 1, 2


@dataclass
class _Reader:
    timezone: str | None
    snoozed_until: datetime | None
    enrolled: set[str]
    capped_sends: list[datetime]


def forecast(d: Dispatcher, session: Session, *, now: datetime, end: datetime) -> Forecast:
    """Every email the dispatcher's passes from `now` until `end` would send, reader by reader. Reads through
    the caller's session (a console request's: on SQLite a second transaction would wait for its lock)."""
    result = Forecast(start=now, end=end)
    result.sending_paused = paused_reason(session)
    paused = set(session.scalars(paused_campaigns()))
    result.paused_campaigns = sorted(paused & set(d.campaigns))
    if result.sending_paused:
        return result
    items, readers = _load(d, session, now, end, paused)
    counters = _counters(session, d, now)
    result.snoozed_readers = sum(1 for r in readers.values() if r.snoozed_until and r.snoozed_until > now)
    heapq.heapify(items)
    tie = itertools.count()
    while items:
        when, _source, _seq, subscriber_id, campaign_key, step = heapq.heappop(items)
        reader = readers[subscriber_id]
        campaign = d.campaigns[campaign_key]
        at = max(when, now)
        if reader.snoozed_until is not None and reader.snoozed_until > at:
            at = reader.snoozed_until  # queue.not_snoozed: nothing of theirs moves before the snooze ends
        if at >= end:
            continue
        tz = reader.timezone or campaign.timezone
        if d.max_per_day and counts_toward_cap(step.index):
            if cap_room(d.max_per_day, reader.capped_sends, now=at, tz_name=tz) <= 0:
                result.held_by_cap += 1
                later = held_until(campaign, step.key, now=at, tz_name=tz)
                heapq.heappush(items, (later, SCHEDULED, next(tie), subscriber_id, campaign_key, step))
                continue
        allowed_at = _domain_allows(d, counters, campaign_key, at)
        if allowed_at != at:
            heapq.heappush(items, (allowed_at, SCHEDULED, next(tie), subscriber_id, campaign_key, step))
            continue
        result.emails.append(Planned(at, subscriber_id, campaign_key, step.key))
        if counts_toward_cap(step.index):
            reader.capped_sends.append(at)
        nxt = _after(d, campaign, step, reader, paused)
        if nxt is not None:
            target, following = nxt
            due = step_due(target, following, after=at, reader_timezone=reader.timezone)
            heapq.heappush(items, (due, SCHEDULED, next(tie), subscriber_id, target.key, following))
    result.emails.sort(key=lambda p: (p.at, p.campaign, p.step_key, p.subscriber_id))
    return result


def _after(d: Dispatcher, campaign: Campaign, step: Step, reader: _Reader,
           paused: set[str]) -> tuple[Campaign, Step] | None:
    """The step that follows a send: the campaign's next one, or after its last, the sequence a lead magnet
    continues into (unless the reader is already there, or that campaign is paused)."""
    nxt = campaign.step(step.index + 1)
    if nxt is not None:
        return campaign, nxt
    target = d.campaigns.get(campaign.continue_into) if campaign.continue_into else None
    if target is None or target.key in reader.enrolled:
        return None
    reader.enrolled.add(target.key)
    first = target.step_by_key(campaign.continue_at) if campaign.continue_at else target.steps[0]
    if first is None or target.key in paused:
        return None
    return target, first


def _load(d: Dispatcher, session: Session, now: datetime, end: datetime,
          paused: set[str]) -> tuple[list[_Item], dict[int, _Reader]]:
    """What waits now: messages queued or deferred, and active enrollments whose next step has a due time,
    before `end` (what is due later cannot lead to a send before it: every step waits for the one before)."""
    items: list[_Item] = []
    live = [k for k in d.campaigns if k not in paused]
    waiting_where = (Message.status.in_(("queued", "deferred")), Message.campaign.in_(live),
                     Message.next_attempt_at < end, Subscriber.status == "active")
    due_where = (Enrollment.status == "active", Enrollment.next_due_at < end, Enrollment.campaign.in_(live),
                 Subscriber.status == "active")
    readers: dict[int, _Reader] = {}

    def reader(row) -> None:
        if row.subscriber_id not in readers:
            readers[row.subscriber_id] = _Reader(row.timezone, row.snoozed_until, set(), [])

    reader_columns = (Subscriber.timezone, Subscriber.snoozed_until)
    for row in session.execute(
            select(Message.id, Message.subscriber_id, Message.campaign, Message.step_key, Message.next_attempt_at,
                   *reader_columns)
            .join(Subscriber, Subscriber.id == Message.subscriber_id).where(*waiting_where)):
        step = d.campaigns[row.campaign].step_by_key(row.step_key)
        if step is not None:
            items.append((row.next_attempt_at or now, FROM_MESSAGE, row.id, row.subscriber_id, row.campaign, step))
            reader(row)
    # Plain rows, not ORM objects: a weekly campaign has most of its readers due within the week.
    due = session.execute(
        select(Enrollment.id, Enrollment.subscriber_id, Enrollment.campaign, Enrollment.next_step,
               Enrollment.next_due_at, *reader_columns)
        .join(Subscriber, Subscriber.id == Enrollment.subscriber_id).where(*due_where)).all()
    had: dict[int, set[str]] = {}
    for chunk in _chunks([e.id for e in due]):
        had.update(live_edits.sent_keys(session, chunk))
    for e in due:
        step = live_edits.next_step(d.campaigns[e.campaign], e, had[e.id])
        if step is not None:
            items.append((e.next_due_at, FROM_ENROLLMENT, e.id, e.subscriber_id, e.campaign, step))
            reader(e)
    # Where a lead magnet leads: who is in those campaigns already (continuation skips them).
    targets = {c.continue_into for c in d.campaigns.values() if c.continue_into}
    if targets:
        for sid, key in session.execute(select(Enrollment.subscriber_id, Enrollment.campaign)
                                        .where(Enrollment.campaign.in_(targets))):
            if sid in readers:
                readers[sid].enrolled.add(key)
    if d.max_per_day:  # the capped emails each reader already got in the last 30 hours
        for chunk in _chunks(sorted(readers)):
            for sid, times in recent_capped_sends(session, set(chunk), now).items():
                readers[sid].capped_sends.extend(times)
    return items, readers


def _chunks(ids: list[int], size: int = 5000):
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def _counters(session: Session, d: Dispatcher, now: datetime) -> dict[tuple[str, str, datetime], int]:
    """Each sending domain's sends already counted in the current hour and day."""
    if d.limits is None:
        return {}
    rows = session.execute(select(SendCounter.domain, SendCounter.window, SendCounter.window_start,
                                  SendCounter.count)
                           .where(SendCounter.window_start >= now - timedelta(days=1))).all()
    return {(domain, window, start): count for domain, window, start, count in rows}


def _domain_allows(d: Dispatcher, counters: dict, campaign_key: str, at: datetime) -> datetime:
    """`at` when the campaign's sending domain has room in every window then (and the send is counted), else
    the start of the next window, where the claim would find room again."""
    if d.limits is None:
        return at
    domain = sending_domain(d, campaign_key)
    if domain is None:
        return at
    current = send_limits.windows(d.limits, at)
    full = [(w, start) for w, start, cap in current if counters.get((domain, w, start), 0) >= cap]
    if full:
        return max(start + (timedelta(hours=1) if w == "hour" else timedelta(days=1)) for w, start in full)
    for w, start, _cap in current:
        counters[(domain, w, start)] = counters.get((domain, w, start), 0) + 1
    return at


# -- the stored forecast -----------------------------------------------------------------------------------------
SLOT = timedelta(minutes=15)
REFRESH_EVERY = timedelta(minutes=15)
# ...or, when the replay itself is long (51 s measured at a million readers), at most a tenth of the
# worker's time: the next one waits ten times as long as the last one took.
REFRESH_DUTY = 10
# How far the stored forecast reaches: the 7 local days of the zone furthest ahead or behind (up to 14 hours
# either way), with a few hours to spare for a worker that was stopped for a while.
STORED_REACH = timedelta(days=8, hours=12)
# Up to this many emails waiting (queued, deferred, or an enrollment's next step due within the range), the
# replay takes well under 200 ms and is done for each request: exact to the minute.
INLINE_LIMIT = 1000


def slot_of(at: datetime) -> datetime:
    """The start of the quarter hour (UTC) `at` falls in."""
    return at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)


def waiting(d: Dispatcher, session: Session, end: datetime, limit: int) -> int:
    """How many emails wait to go before `end`, counted up to `limit + 1` only (through the due indexes)."""
    found = 0
    for query in (select(Message.id).where(Message.status.in_(("queued", "deferred")), Message.next_attempt_at < end),
                  select(Enrollment.id).where(Enrollment.status == "active", Enrollment.next_due_at < end)):
        found += session.scalar(select(func.count()).select_from(query.limit(limit + 1 - found).subquery()))
        if found > limit:
            break
    return found


def store(session: Session, result: Forecast, *, computed_at: datetime, seconds: float) -> None:
    """Replaces the stored forecast with `result` (the caller commits)."""
    slots = Counter((slot_of(p.at), p.campaign, p.step_key) for p in result.emails)
    session.execute(delete(ForecastCount))
    session.add_all(ForecastCount(slot_at=at, campaign=c, step_key=k, n=n) for (at, c, k), n in slots.items())
    run = session.get(ForecastRun, 1) or ForecastRun(id=1)
    run.computed_at, run.until, run.seconds = computed_at, result.end, seconds
    run.snoozed_readers, run.held_by_cap = result.snoozed_readers, result.held_by_cap
    session.add(run)


def stored(d: Dispatcher, session: Session, *, now: datetime, end: datetime) -> Forecast | None:
    """The stored forecast from now until `end`, or None when none is stored or it does not reach `end`. The
    quarter hours already over are left out; campaigns paused since it was computed are too."""
    run = session.get(ForecastRun, 1)
    if run is None or run.until < end:
        return None
    result = Forecast(start=now, end=end, computed_at=run.computed_at, snoozed_readers=run.snoozed_readers,
                      held_by_cap=run.held_by_cap, slots=Counter())
    result.sending_paused = paused_reason(session)
    paused = set(session.scalars(paused_campaigns()))
    result.paused_campaigns = sorted(paused & set(d.campaigns))
    if result.sending_paused:
        result.slots = Counter()
        return result
    for at, campaign, step_key, n in session.execute(
            select(ForecastCount.slot_at, ForecastCount.campaign, ForecastCount.step_key, ForecastCount.n)
            .where(ForecastCount.slot_at > now - SLOT, ForecastCount.slot_at < end)):
        if campaign not in paused:
            result.slots[(at, campaign, step_key)] += n
    return result


def stale(session: Session, *, now: datetime, every: timedelta = REFRESH_EVERY) -> bool:
    """Whether the stored forecast should be computed again: none yet, older than `every` (or than ten times
    what the last replay took, when that is longer), or a campaign was published, paused or resumed, or sending
    paused or resumed, since it was computed."""
    run = session.get(ForecastRun, 1)
    if run is None or run.computed_at <= now - max(every, timedelta(seconds=run.seconds * REFRESH_DUTY)):
        return True
    changed = [session.scalar(select(func.max(CampaignVersion.published_at))),
               session.scalar(select(func.max(CampaignState.updated_at))),
               session.scalar(select(func.max(SendingState.changed_at)))]
    return any(at is not None and at > run.computed_at for at in changed)


def refresh(d: Dispatcher, sessions: sessionmaker, *, now: datetime, force: bool = False) -> Forecast | None:
    """Computes and stores the forecast when it is stale (or `force`); returns it, or None when it was fresh."""
    with sessions() as session:
        if not force and not stale(session, now=now):
            return None
        started = clock.perf_counter()
        result = forecast(d, session, now=now, end=now + STORED_REACH)
    with sessions() as session, session.begin():
        store(session, result, computed_at=now, seconds=clock.perf_counter() - started)
    return result


def for_console(d: Dispatcher, session: Session, *, now: datetime, end: datetime) -> Forecast:
    """What the home page shows: the replay itself on a small list, else the stored forecast, else (a large list
    the worker has not got to yet) an empty forecast marked `not_ready`."""
    if waiting(d, session, end, INLINE_LIMIT) <= INLINE_LIMIT:
        return forecast(d, session, now=now, end=end)
    found = stored(d, session, now=now, end=end)
    if found is not None:
        return found
    result = Forecast(start=now, end=end, slots=Counter(), not_ready=True)
    result.sending_paused = paused_reason(session)
    return result
