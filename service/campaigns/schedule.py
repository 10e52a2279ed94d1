"""The calendar arithmetic of a campaign: when step N is due, given when step N-1 was actually sent, in
which time zone, at which local hour and on which weekdays. `step_due` is the one rule every caller uses."""
from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.campaigns.model import ALL_DAYS, Campaign, Delay, Step


def due_at(*, delay: Delay, after: datetime, tz_name: str, send_hour: int,
           send_days: frozenset[int] = ALL_DAYS) -> datetime:
    """When a step is due: `delay` after `after` (the previous step's actual send, UTC).

    Day-based delays count calendar days in the reader's zone and land on the send hour there, so a
    weekly email keeps its weekday and local hour across daylight-saving changes. A day outside
    `send_days` (weekday numbers, Monday = 0) moves on to the next allowed day. The result is UTC.
    """
    after = after.astimezone(UTC)
    if delay.immediate:
        return after
    if delay.days == 0:
        return after + timedelta(seconds=delay.seconds)
    tz = ZoneInfo(tz_name)
    local_day: date = after.astimezone(tz).date() + timedelta(days=delay.days)
    while local_day.weekday() not in send_days:  # send_days is never empty (checked at load)
        local_day += timedelta(days=1)
    local = datetime.combine(local_day, time(hour=send_hour), tzinfo=tz)
    # A send hour inside a spring-forward gap does not exist; zoneinfo maps it forward, which we keep.
    return local.astimezone(UTC) + timedelta(seconds=delay.seconds)


def step_due(campaign: Campaign, step: Step, *, after: datetime, reader_timezone: str | None) -> datetime:
    """The one rule for when a reader's `step` is due: its delay after `after` (the previous step's actual
    send, or the moment the reader joined), in the step's send window (its send hour and weekdays, else the
    campaign's) in the reader's time zone, else the campaign's. Every caller uses it: the dispatcher after a
    send, the preference page's time-zone change and digest switch, continuation, live edits, import."""
    hour, days = campaign.window(step)
    return due_at(delay=step.delay, after=after, tz_name=reader_timezone or campaign.timezone, send_hour=hour,
                  send_days=days)


def next_window_day(campaign: Campaign, step: Step | None, *, after: datetime, reader_timezone: str | None) -> datetime:
    """The step's send hour on the next allowed day after `after`, in the reader's zone: where a message held
    back by the reader's daily cap goes."""
    hour, days = campaign.window(step) if step is not None else (campaign.send_hour, campaign.send_days)
    return due_at(delay=Delay(days=1), after=after, tz_name=reader_timezone or campaign.timezone, send_hour=hour,
                  send_days=days)


def valid_timezone(name: str | None) -> bool:
    if not name or len(name) > 64 or not re.fullmatch(r"[A-Za-z0-9_+\-/]+", name):
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True
