"""Fixed-window counters in the database, so a limit holds across processes and machines."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .config import RateLimit
from .models import RateHit


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


def hit(session: Session, key: str, limit: RateLimit, now: datetime) -> Verdict:
    """Count one hit for `key` in the current window; the caller commits."""
    epoch = int(now.timestamp())
    start = datetime.fromtimestamp(epoch - epoch % limit.seconds, UTC)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(RateHit).values(key=key[:200], window_start=start, count=1)
    session.execute(stmt.on_conflict_do_update(index_elements=["key", "window_start"],
                                               set_={"count": RateHit.count + 1}))
    count = session.scalar(select(RateHit.count).where(RateHit.key == key[:200], RateHit.window_start == start))
    if (count or 0) <= limit.count:
        if epoch % 97 == 0:  # now and then, forget old windows
            session.execute(delete(RateHit).where(RateHit.window_start < start - timedelta(days=1)))
        return Verdict(True)
    session.execute(update(RateHit).where(RateHit.key == key[:200], RateHit.window_start == start)
                    .values(count=RateHit.count - 1))
    return Verdict(False, retry_after=max(1, int((start + timedelta(seconds=limit.seconds) - now).total_seconds())))
