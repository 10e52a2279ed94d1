"""Fixed-window counters shared by every process: in the database (default) or in Redis.

`DRIP_RATE_LIMIT_STORAGE` chooses: "database" keeps counters in `rate_hits` (the caller commits); a
redis:// URL keeps them in Redis (INCR + EXPIRE, atomic, nothing to commit). Either way the limit holds
across gunicorn workers and machines, unlike an in-process counter that multiplies the limit by N.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from service.core.config import RateLimit
from service.core.db import DriverSQL, DriverTransaction, driver_time

log = logging.getLogger(__name__)
_redis_clients: dict[str, tuple] = {}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


def _window(limit: RateLimit, now: datetime) -> tuple[datetime, int]:
    """The fixed window `now` falls in (its start) and the whole seconds until the next one (at least 1)."""
    stamp = now.timestamp()
    start = int(stamp) - int(stamp) % limit.seconds
    return datetime.fromtimestamp(start, UTC), max(1, int(start + limit.seconds - stamp))


def check(session: Session, storage: str, key: str, limit: RateLimit, now: datetime) -> Verdict:
    """Count one hit for `key` in the storage the settings name."""
    if storage == "database":
        return hit(session, key, limit, now)
    return redis_hit(storage, key, limit, now)


# One conditional upsert, as plain SQL (the same on both databases): SQLAlchemy does not cache the
# compiled form of its dialect INSERT ... ON CONFLICT constructs, and compiling one per request cost more
# than running it.
_HIT = DriverSQL("""INSERT INTO rate_hits ("key", window_start, count) VALUES (:key, :window_start, 1)
ON CONFLICT ("key", window_start) DO UPDATE SET count = rate_hits.count + 1 WHERE rate_hits.count < :limit
RETURNING count""")


@dataclass(frozen=True)
class PendingHit:
    """A hit the caller counts inside its own transaction (signups): `count_pending`, or `hit_cte` inside a
    larger statement on PostgreSQL.

    `first_is_new_subscriber`: a per-address hit whose first signup in a window is counted by the
    subscriber row that signup creates (its created_at), not by a row here: the caller counts it only for
    an address that already has a subscriber row or is suppressed (one statement and about two database
    pages fewer for every new signup)."""
    key: str
    window_start: datetime
    limit: int
    retry_after: int
    first_is_new_subscriber: bool = False


def pending_hit(key: str, limit: RateLimit, now: datetime, *, first_is_new_subscriber: bool = False) -> PendingHit:
    start, retry = _window(limit, now)
    return PendingHit(key[:200], start, limit.count, retry, first_is_new_subscriber)


def hit_cte(n: int, after: str | None) -> str:
    """PostgreSQL: hit number n as a data-modifying CTE named hit_n, with parameters key_n, window_n,
    limit_n; counted only when the CTE `after` (the previous hit) counted its own. Like _HIT, it returns
    a row only when this hit was counted."""
    condition = f" WHERE EXISTS (SELECT 1 FROM {after})" if after else ""  # noqa: S608 - our CTE name
    return (f"""hit_{n} AS (INSERT INTO rate_hits ("key", window_start, count) SELECT :key_{n}, :window_{n}, 1"""
            f"""{condition}\nON CONFLICT ("key", window_start) DO UPDATE SET count = rate_hits.count + 1 """
            f"""WHERE rate_hits.count < :limit_{n} RETURNING count)""")


def forget_old_windows(conn: Connection | DriverTransaction, now: datetime) -> None:
    """After hits counted elsewhere (hit_cte): the occasional clean-up hit() does."""
    _forget_old_windows(conn, now)


def count_pending(conn: Connection | DriverTransaction, pending: PendingHit, *, used: int = 0) -> bool:
    """Counts a pending hit on its own (one statement, as hit() does); False when its window is full.
    `used`: hits of this window counted elsewhere (a subscriber row created in it, `first_is_new_subscriber`)."""
    limit = pending.limit - used
    if limit < 1:
        return False
    params = {"key": pending.key, "window_start": driver_time(conn, pending.window_start), "limit": limit}
    if _HIT.first(conn, params) is None:
        return False
    _forget_old_windows(conn, pending.window_start)
    return True


def hit(session: Session, key: str, limit: RateLimit, now: datetime) -> Verdict:
    """Count one hit for `key` in the current window unless the window is full; the caller commits.

    One conditional upsert: a row back is an allowed hit, counted; no row back means the window is
    full and nothing changed (no read-back, no undo).
    """
    start, retry = _window(limit, now)
    if limit.count < 1:
        return Verdict(False, retry_after=retry)
    conn = session.connection()
    counted = _HIT.first(conn, {"key": key[:200], "window_start": driver_time(conn, start), "limit": limit.count})
    if counted is None:
        return Verdict(False, retry_after=retry)
    _forget_old_windows(conn, start)
    return Verdict(True)


_last_cleanup = [0.0]  # this process's last clean-up (time.monotonic())


_FORGET = DriverSQL("DELETE FROM rate_hits WHERE window_start < :before")


def _forget_old_windows(conn: Connection | DriverTransaction, start: datetime) -> None:
    """Now and then (at most once a minute per process), delete windows older than a day. A clock check,
    not `now % 97`: that ran the DELETE on every request during one second in 97, under load too."""
    if time.monotonic() - _last_cleanup[0] < 60:
        return
    _last_cleanup[0] = time.monotonic()
    _FORGET.first(conn, {"before": driver_time(conn, start - timedelta(days=1))})


def _redis(url: str):
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
