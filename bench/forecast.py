"""The console home page's forecast ("what goes out in the next 7 days") grows with the readers due that week,
linearly, and stays well under the time of the dispatcher's own work for the same readers.

Databases with 10,000 and with 100,000 readers (SQLite by default, --db postgresql), every one enrolled and
due once in the coming week (spread over it). Timed, median of three: `forecast()` over the next 8 days, and,
as the baseline measured in the same run, one pass of finding and claiming the same number of due readers
on the small database (bench/tick.py's measure).
Goals: the large forecast costs at most 1.5x per reader what the small one does, and the small forecast
takes at most as long as the dispatcher's queue-and-claim of its readers.

    .venv/bin/python bench/forecast.py [--small 10000] [--large 100000] [--db sqlite|postgresql]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, make_templates, pg_create, pg_drop, print_table, seed, sqlite_create
from send import worker_env
from tick import time_pass


def time_forecast(url: str, templates: Path, now: datetime, expected: int, runs: int = 3) -> float:
    from service.core.config import Settings
    from service.operator.forecast import forecast
    from service.runtime import build_runtime

    os.environ.update(worker_env(url, "file:///dev/null", templates))
    rt = build_runtime(Settings.from_env(dotenv=None))
    times = []
    for _ in range(runs):
        with rt.sessions() as s:
            start = time.perf_counter()
            result = forecast(rt.dispatcher(), s, now=now, end=now + timedelta(days=8))
            times.append(time.perf_counter() - start)
        firsts = sum(p.step_key == "tuesday" for p in result.emails)  # each reader's waiting step, once
        if firsts != expected:
            raise RuntimeError(f"expected {expected} readers' emails forecast, got {firsts}")
    rt.sessions.kw["bind"].dispose()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    now = datetime(2026, 3, 2, 15, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        templates = make_templates(tmp / "templates")
        figures = {}
        for label, total in (("small", args.small), ("large", args.large)):
            name = f"drip_bench_forecast_{label}"
            url = pg_create(name) if args.db == "postgresql" else sqlite_create(tmp / f"{name}.sqlite3")
            try:
                # due=0: every reader waits for a step due between tomorrow and a week after it
                seed(url, total=total, due=0, now=now)
                figures[label] = time_forecast(url, templates, now, expected=total)
            finally:
                if args.db == "postgresql":
                    pg_drop(name)
        name = "drip_bench_forecast_pass"
        url = pg_create(name) if args.db == "postgresql" else sqlite_create(tmp / f"{name}.sqlite3")
        try:
            seed(url, total=args.small, due=args.small, now=now)
            dispatch = time_pass(url, templates, args.small, now)
        finally:
            if args.db == "postgresql":
                pg_drop(name)
    per_small = figures["small"] / args.small * 1e6
    per_large = figures["large"] / args.large * 1e6
    print_table([
        Row(f"forecast, {args.large:,} readers, per reader", per_large, "us",
            f"{args.small:,} readers, per reader", per_small, "<= 1.5x", per_large <= 1.5 * per_small),
        Row(f"forecast, {args.small:,} readers", figures["small"] * 1000, "ms",
            f"queue+claim of {args.small:,} (ms)", dispatch * 1000, "<= 1x", figures["small"] <= dispatch),
    ])


if __name__ == "__main__":
    main()
