"""One bench worker process: the real Dispatcher, configured from the environment like `drip worker`.

It builds its runtime (templates compiled, connection pool open), prints "ready", waits for "go" on
stdin so every worker starts together, then runs passes until a pass finds nothing to do, and prints
one JSON line: counts, wall-clock start and end (time.time(), comparable across processes on one
machine) and its peak RSS (getrusage, kilobytes).

BENCH_TRANSPORT=discard composes every email and throws it away (for the memory figure, where sending a
million emails would not fit the time budget); otherwise DRIP_EMAIL_URL is used as in production.
BENCH_PROFILE=PATH writes cProfile statistics (CPU time) of the main thread to PATH.<pid>.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.core.config import Settings
from service.runtime import build_runtime
from service.transports.base import OutboundEmail, SendResult


class DiscardTransport:
    """Accepts everything, keeps nothing: measures claim + render + MIME + record without a network."""

    name = "discard"

    def send(self, batch: Sequence[OutboundEmail]) -> Iterator[SendResult]:
        for _item in batch:
            yield SendResult(ok=True, code=250)

    def close(self) -> None:
        pass


def main() -> None:
    import os

    settings = Settings.from_env(dotenv=None)
    rt = build_runtime(settings)
    overrides = {"transport_factory": DiscardTransport} if os.environ.get("BENCH_TRANSPORT") == "discard" else {}
    dispatcher = rt.dispatcher(**overrides)
    # PostgreSQL: two pooled connections open before "go" (the dispatcher's and its background writer's),
    # so their server processes exist when the bench starts reading the database server's CPU.
    engine = rt.sessions.kw["bind"]
    if engine.dialect.name == "postgresql":
        with engine.connect() as first, engine.connect() as second:
            first.exec_driver_sql("SELECT 1")
            second.exec_driver_sql("SELECT 1")
    # The composer (templates compiled, DKIM keys loaded) is built on a worker's first send; built here, as
    # the connections above are opened here, so the figures per email are of sending, not of starting up.
    _ = rt.composer
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    totals: dict[str, int] = {}
    profile = None
    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        profile = cProfile.Profile(time.thread_time)  # CPU of this thread, not waits for the GIL
        profile.enable()
    while True:
        summary = dispatcher.run_pass()
        for key, value in vars(summary).items():
            totals[key] = totals.get(key, 0) + value
        if not (summary.queued or summary.sent or summary.deferred or summary.failed):
            break
    end = time.time()
    if profile is not None:
        profile.disable()
        profile.dump_stats(f"{os.environ['BENCH_PROFILE']}.{os.getpid()}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds spent in this process during the run (user + system): per email, the figure that does not
    # depend on what else the machine is doing, unlike the wall-clock rate.
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    print(json.dumps({"start": start, "end": end, "rss_kb": usage.ru_maxrss, "cpu_s": cpu, **totals}), flush=True)
    sys.stdin.readline()  # stay connected until told: the bench reads the database server's CPU first


if __name__ == "__main__":
    main()
