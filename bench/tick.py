"""Scheduler cost grows with the work due, not with the list; a worker's memory stays flat.

1. Pass cost: PostgreSQL (or, with --db sqlite, SQLite) databases with 10,000 and with 1,000,000
   subscribers (COPY), each enrolled, each non-due one carrying a sent message of history; the same
   1,000 are due. Timed: one pass of finding and claiming the due work (Dispatcher.queue_due, then
   claim until empty), median of three (the due work is reset between runs).
   Goal: the 1M pass takes at most 2x the 10k pass.
2. Memory: a bench worker (bench/worker.py, discarding transport: it claims, renders, builds the MIME
   message and records, but sends nothing) drains all due work; its peak RSS (getrusage) with a small
   and with a ten-times larger due set, on the small and the large list. Sending to a full million would
   take longer than the whole bench may (see docs/performance.md); `--memory-due` sets the larger size.

    .venv/bin/python bench/tick.py [--small 10000] [--large 1000000] [--due 1000] [--memory-due 100000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Row,
    make_templates,
    pg_create,
    pg_drop,
    print_table,
    seed,
    seed_history,
    sqlite_create,
)
from send import run_workers, worker_env


def build(db: str, tmp: Path, name: str, total: int, due: int, now: datetime) -> str:
    url = pg_create(name) if db == "postgresql" else sqlite_create(tmp / f"{name}.sqlite3")
    seed(url, total=total, due=due, now=now)
    if total > due:
        seed_history(url, first=due + 1, last=total, now=now - timedelta(days=3))
    return url


def make_due(conn, count: int, now: datetime) -> None:
    """Enrollments 1..count due at `now` again (through the model's column types: SQLite stores naive UTC)."""
    from sqlalchemy import update

    from service.core.models import Enrollment

    conn.execute(update(Enrollment).where(Enrollment.id <= count).values(next_due_at=now, status="active"))


def time_pass(url: str, templates: Path, due: int, now: datetime, runs: int = 3) -> float:
    """Median seconds of queue_due + claim for all due work, resetting the due work between runs."""
    import os

    from sqlalchemy import text

    from service.core.config import Settings
    from service.dispatch.policy import PassSummary
    from service.runtime import build_runtime

    os.environ.update(worker_env(url, "file:///dev/null", templates))
    rt = build_runtime(Settings.from_env(dotenv=None))
    d = rt.dispatcher()
    with rt.sessions() as s:
        base_msg = s.execute(text("SELECT coalesce(max(id), 0) FROM messages")).scalar()
        base_evt = s.execute(text("SELECT coalesce(max(id), 0) FROM events")).scalar()
    times = []
    for _ in range(runs):
        summary = PassSummary()
        start = time.perf_counter()
        while d.queue_due(now, summary) >= d.batch_size:
            pass
        while d.claim(now, summary):
            pass
        times.append(time.perf_counter() - start)
        if summary.queued != due:
            raise RuntimeError(f"expected {due} queued, got {summary.queued}")
        with rt.sessions() as s, s.begin():  # put the same due work back
            s.execute(text("DELETE FROM events WHERE id > :e"), {"e": base_evt})
            s.execute(text("DELETE FROM messages WHERE id > :m"), {"m": base_msg})
            make_due(s, due, now)
    rt.sessions.kw["bind"].dispose()
    return statistics.median(times)


def peak_rss(url: str, templates: Path, due_total: int, now: datetime) -> float:
    """MB of peak RSS of one discarding worker draining `due_total` due readers."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.begin() as conn:
        make_due(conn, due_total, now)
    engine.dispose()
    [result] = run_workers(1, worker_env(url, "file:///dev/null", templates, BENCH_TRANSPORT="discard"))
    if result["sent"] != due_total:
        raise RuntimeError(f"memory run: expected {due_total} processed, got {result['sent']}")
    return result["rss_kb"] / 1024


def run(small: int = 10_000, large: int = 1_000_000, due: int = 1000, memory_due: int = 100_000,
        db: str = "postgresql") -> list[Row]:
    now = datetime.now(UTC)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        templates = make_templates(Path(tmpdir) / "templates")
        times, rss = {}, {}
        # the timed passes leave the first `due` readers due again, so at least those are processed
        processed = {small: min(small, max(due, memory_due // 10)), large: min(large, max(due, memory_due))}
        for size in (small, large):
            name = f"drip_bench_tick_{size}"
            url = build(db, Path(tmpdir), name, size, due, now)
            times[size] = time_pass(url, templates, due, now)
            rss[size] = peak_rss(url, templates, processed[size], now)
            if db == "postgresql":
                pg_drop(name)
        rows.append(Row(f"tick {db}: find+claim {due} due of {large:,}", times[large] * 1000, "ms",
                        f"same with {small:,} (ms)", times[small] * 1000, "<= 2.0x", times[large] <= 2 * times[small]))
        rows.append(Row(f"memory: worker peak RSS, {processed[large]:,} of {large:,}", rss[large], "MB",
                        f"{processed[small]:,} of {small:,} (MB)", rss[small], "<= 1.2x",
                        rss[large] <= 1.2 * rss[small]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Pass cost and worker memory vs list size")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--memory-due", type=int, default=100_000)
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    print_table(run(args.small, args.large, args.due, args.memory_due, args.db))


if __name__ == "__main__":
    main()
