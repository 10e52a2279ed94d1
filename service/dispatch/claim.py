"""Claim: due messages move to `sending` with a lease, in their own committed transaction (FOR UPDATE SKIP
LOCKED on PostgreSQL; SQLite runs one writer at a time). Expired leases of a worker that died go first.
A reader over their daily cap waits for their next allowed day; a sending domain at its hourly or daily
limit waits, the others still go."""
from __future__ import annotations

import email.utils
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from service.campaigns.model import Campaign
from service.campaigns.schedule import next_window_day
from service.core import events
from service.core.models import Message, Subscriber, UTCDateTime
from service.dispatch import send_limits as sendlimits
from service.dispatch.policy import PassSummary
from service.dispatch.queue import not_snoozed, paused_campaigns

if TYPE_CHECKING:
    from service.dispatch.dispatcher import Dispatcher


def claim(d: Dispatcher, now: datetime, summary: PassSummary) -> list[int]:
    """Lease up to `batch_size` due messages to this worker. Plain rows, one UPDATE for the
    batch and one INSERT of its events (the ORM cost ~60 us per message here)."""
    real_now = d.real_clock()
    with d.sessions() as session, session.begin():
        # Two queries. On PostgreSQL each is an index walk in (next_attempt_at, id) order that
        # stops after the batch; one query with both conditions OR-ed read every due message and sorted
        # them for every batch: 5.8 ms a claim with 4,000 due, and it grew with the backlog (200,000
        # queued for one morning's send). Expired leases (a worker died mid-batch) go first.
        full = _campaigns_at_limit(d, session, now) if d.limits is not None else []
        rows = session.execute(_claim_query(d,
            and_(Message.status == "sending", Message.lease_until < real_now), now, full, d.batch_size)).all()
        if len(rows) < d.batch_size:
            rows += session.execute(_claim_query(d,
                and_(Message.status.in_(("queued", "deferred")), Message.next_attempt_at <= now), now, full,
                d.batch_size - len(rows))).all()
        candidates = _frequency_cap(d, session, rows, now)  # readers' daily caps
        messages = _within_limits(d, session, candidates, now)
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
                                detail=f"attempt {m.attempts + 1} by {d.worker_id}"))
        table = Message.__table__
        session.execute(
            update(table).where(d.one_of(table.c.id, [m.id for m in messages]))
            .values(status="sending", attempts=table.c.attempts + 1, lease_until=real_now + d.lease,
                    claimed_by=d.worker_id, updated_at=now,
                    first_attempt_at=func.coalesce(table.c.first_attempt_at,
                                                   bindparam("claim_now", now, type_=UTCDateTime()))))
        events.record_many(session, history)
        return [m.id for m in messages]


def _claim_query(d: Dispatcher, due, now: datetime, full: list[str], limit: int):
    query = (
        select(Message.id, Message.status, Message.attempts, Message.claimed_by, Message.subscriber_id,
               Message.campaign, Message.step_key, Message.step_index)
        .where(due, Message.campaign.not_in(paused_campaigns()))
        .where(not_snoozed(Message.subscriber_id, now))  # held while the reader is snoozed
        .order_by(Message.next_attempt_at, Message.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if full:  # domains at their limit wait; the others still go
        query = query.where(Message.campaign.notin_(full))
    return query


def _frequency_cap(d: Dispatcher, session: Session, messages: Sequence[Row], now: datetime) -> list[Row]:
    """The claimable messages minus those over a reader's daily cap. A reader's local day (their zone,
    else the campaign's) holds at most `max_per_day` emails across all campaigns, counting those sent
    or being sent that day; the first step of a campaign (the welcome the reader just asked for) is
    exempt and not counted. A held message stays queued with `next_attempt_at` moved to the next
    allowed day at its send hour; held messages keep their (next_attempt_at, id) order, so they go
    one per day in the order they were queued. Reclaimed `sending` rows are never held."""
    capped = [m for m in messages if m.status != "sending" and counts_toward_cap(m.step_index)]
    if not d.max_per_day or not capped:
        return list(messages)
    zones = dict(session.execute(select(Subscriber.id, Subscriber.timezone)
                                 .where(Subscriber.id.in_({m.subscriber_id for m in capped}))).all())
    recent = recent_capped_sends(session, {m.subscriber_id for m in capped}, now)
    held: dict[int, datetime] = {}
    history: list[dict] = []
    room: dict[int, int] = {}
    for m in capped:  # in claim order: (next_attempt_at, id)
        campaign = d.campaigns.get(m.campaign)
        if campaign is None:
            continue
        tz = zones.get(m.subscriber_id) or campaign.timezone
        if m.subscriber_id not in room:
            room[m.subscriber_id] = cap_room(d.max_per_day, recent.get(m.subscriber_id, ()), now=now, tz_name=tz)
        if room[m.subscriber_id] > 0:
            room[m.subscriber_id] -= 1
            continue
        held[m.id] = later = held_until(campaign, m.step_key, now=now, tz_name=tz)
        history.append(dict(type="held", created_at=now, subscriber_id=m.subscriber_id, message_id=m.id,
                            detail=f"daily cap of {d.max_per_day} reached; "
                                   f"next try {later:%Y-%m-%d %H:%M} UTC"))
    if held:
        table = Message.__table__
        session.execute(update(table).where(table.c.id == bindparam("held_id"))
                        .values(next_attempt_at=bindparam("later")),
                        [{"held_id": i, "later": t} for i, t in held.items()])
        events.record_many(session, history)
    return [m for m in messages if m.id not in held]


def counts_toward_cap(step_index: int) -> bool:
    """The daily cap's exemption: a campaign's first step (the welcome the reader just asked for) is neither
    held nor counted."""
    return step_index != 0


def cap_room(max_per_day: int, sends: Iterable[datetime], *, now: datetime, tz_name: str) -> int:
    """How many more capped emails a reader may get in their local day of `now`, given when their capped
    emails of the last 30 hours went. The forecast asks the same question for every day it looks at."""
    midnight = _local_midnight(now, tz_name)
    return max_per_day - sum(t >= midnight for t in sends)


def held_until(campaign: Campaign, step_key: str, *, now: datetime, tz_name: str) -> datetime:
    """Where a message over the reader's daily cap goes: the step's send hour on the next allowed day."""
    return next_window_day(campaign, campaign.step_by_key(step_key), after=now, reader_timezone=tz_name)


def recent_capped_sends(session: Session, subscriber_ids: set[int], now: datetime) -> dict[int, list[datetime]]:
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


def sending_domain(d: Dispatcher, campaign_key: str) -> str | None:
    campaign = d.campaigns.get(campaign_key)
    if campaign is None:
        return None
    return email.utils.parseaddr(d.composer.from_header(campaign))[1].rpartition("@")[2].lower() or None


def _campaigns_at_limit(d: Dispatcher, session: Session, now: datetime) -> list[str]:
    assert d.limits is not None
    return [key for key in d.campaigns if (domain := sending_domain(d, key)) is not None
            and sendlimits.remaining(session, domain, d.limits, now) == 0]


def _within_limits(d: Dispatcher, session: Session, messages: Sequence[Message], now: datetime) -> list[Message]:
    """The claimable messages, in order, that their domain's hourly/daily allowance still covers; the
    allowance is taken now. The rest are left exactly as they were: queued, no attempt counted."""
    if d.limits is None:
        return list(messages)
    by_domain: dict[str | None, list[Message]] = {}
    for m in messages:
        by_domain.setdefault(sending_domain(d, m.campaign), []).append(m)
    keep: set[int] = set()
    for domain, group in by_domain.items():
        granted = len(group) if domain is None else sendlimits.reserve(session, domain, len(group),
                                                                       d.limits, now)
        keep.update(m.id for m in group[:granted])
    return [m for m in messages if m.id in keep]


def _local_midnight(now: datetime, tz_name: str) -> datetime:
    """The start (UTC) of `now`'s calendar day in `tz_name`, for the daily cap."""
    local = now.astimezone(ZoneInfo(tz_name))
    return datetime.combine(local.date(), dtime(0), tzinfo=local.tzinfo).astimezone(UTC)
