"""Fixed-window counters shared by every process: in the database (default) or in Redis.

`DRIP_RATE_LIMIT_STORAGE` chooses: "database" keeps counters in `rate_hits` (the caller commits); a
redis:// URL keeps them in Redis (INCR + EXPIRE, atomic, nothing to commit). Either way the limit holds
across gunicorn workers and machines, unlike an in-process counter that multiplies the limit by N.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .config import RateLimit
from .models import RateHit

log = logging.getLogger(__name__)
_redis_clients: dict[str, tuple] = {}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


def _window(limit: RateLimit, now: datetime) -> tuple[datetime, int]:
    epoch = int(now.timestamp())
    start = datetime.fromtimestamp(epoch - epoch % limit.seconds, UTC)
    retry = max(1, int((start + timedelta(seconds=limit.seconds) - now).total_seconds()))
    return start, retry


def check(session: Session, storage: str, key: str, limit: RateLimit, now: datetime) -> Verdict:
    """Count one hit for `key` in the storage the settings name."""
    if storage == "database":
        return hit(session, key, limit, now)
    return redis_hit(storage, key, limit, now)


def hit(session: Session, key: str, limit: RateLimit, now: datetime) -> Verdict:
    """Count one hit for `key` in the current window; the caller commits."""
    start, retry = _window(limit, now)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(RateHit).values(key=key[:200], window_start=start, count=1)
    session.execute(stmt.on_conflict_do_update(index_elements=["key", "window_start"],
                                               set_={"count": RateHit.count + 1}))
    count = session.scalar(select(RateHit.count).where(RateHit.key == key[:200], RateHit.window_start == start))
    if (count or 0) <= limit.count:
        if int(now.timestamp()) % 97 == 0:  # now and then, forget old windows
            session.execute(delete(RateHit).where(RateHit.window_start < start - timedelta(days=1)))
        return Verdict(True)
    session.execute(update(RateHit).where(RateHit.key == key[:200], RateHit.window_start == start)
                    .values(count=RateHit.count - 1))
    return Verdict(False, retry_after=retry)


def _redis(url: str):  # noqa: ANN202
    """One client per URL and process, made lazily so each forked gunicorn worker has its own pool.
    `?prefix=NAME` (default "drip") lets several deployments share one Redis without sharing counters."""
    import redis

    if url not in _redis_clients:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        prefix = (query.pop("prefix", None) or ["drip"])[-1]
        plain = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        _redis_clients[url] = (redis.Redis.from_url(plain, socket_timeout=2, socket_connect_timeout=2), prefix)
    return _redis_clients[url]


def redis_hit(url: str, key: str, limit: RateLimit, now: datetime) -> Verdict:
    """INCR the window's counter; the first hit sets its expiry. Redis down fails open, loudly: refusing
    every signup because a counter store is away would be worse than a few minutes without a limit."""
    import redis

    client, prefix = _redis(url)
    start, retry = _window(limit, now)
    name = f"{prefix}:rl:{key[:200]}:{int(start.timestamp())}"
    try:
        pipe = client.pipeline()
        pipe.incr(name)
        pipe.expire(name, limit.seconds + 60, nx=True)
        count = pipe.execute()[0]
    except redis.RedisError as exc:
        log.error("rate-limit storage unavailable (%s); request allowed without a limit", type(exc).__name__)
        return Verdict(True)
    return Verdict(True) if count <= limit.count else Verdict(False, retry_after=retry)
