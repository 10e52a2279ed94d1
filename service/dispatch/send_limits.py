"""Send limits per sending domain: at most N sends per clock hour and per UTC day, the day cap ramped up
during a warm-up (see SendLimits in config.py).

The allowance is taken at claim time, inside the claim's transaction: the counter rows are locked (FOR
UPDATE on PostgreSQL; SQLite has one writer at a time), so two workers never both spend the last sends.
A claimed message counts once per attempt, whether the attempt is accepted or not.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.core.config import SendLimits
from service.core.models import SendCounter


def windows(limits: SendLimits, now: datetime) -> list[tuple[str, datetime, int]]:
    """(window, start, cap) for each limit in force at `now`, hour first (one lock order for everyone)."""
    now = now.astimezone(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    out = []
    if limits.per_hour is not None:
        out.append(("hour", hour, limits.per_hour))
    day_cap = limits.day_cap(now.date())
    if day_cap is not None:
        out.append(("day", hour.replace(hour=0), day_cap))
    return out


def remaining(session: Session, domain: str, limits: SendLimits, now: datetime) -> int | None:
    """Sends left for `domain` now, without reserving any (None: no limit applies)."""
    left: int | None = None
    for window, start, cap in windows(limits, now):
        used = session.scalar(select(SendCounter.count).where(
            SendCounter.domain == domain, SendCounter.window == window, SendCounter.window_start == start)) or 0
        left = max(0, cap - used) if left is None else min(left, max(0, cap - used))
    return left


def reserve(session: Session, domain: str, wanted: int, limits: SendLimits, now: datetime) -> int:
    """Take up to `wanted` sends from `domain`'s allowance and return how many were granted; the caller's
    transaction commits the counters together with the claim."""
    current = windows(limits, now)
    if not current or wanted <= 0:
        return max(0, wanted)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    grant = wanted
    for window, start, cap in current:
        created = session.execute(insert(SendCounter).values(domain=domain, window=window, window_start=start, count=0)
                                  .on_conflict_do_nothing()).rowcount
        if created and window == "hour":  # a new hour: forget this domain's windows older than two days
            session.execute(delete(SendCounter).where(SendCounter.domain == domain,
                                                      SendCounter.window_start < start - timedelta(days=2)))
        used = session.scalar(select(SendCounter.count).where(
            SendCounter.domain == domain, SendCounter.window == window, SendCounter.window_start == start)
            .with_for_update())
        grant = min(grant, max(0, cap - (used or 0)))
    if grant:
        for window, start, _cap in current:
            session.execute(update(SendCounter).where(
                SendCounter.domain == domain, SendCounter.window == window, SendCounter.window_start == start)
                .values(count=SendCounter.count + grant))
    return grant
