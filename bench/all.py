"""`make bench`: every benchmark in one run, one table (figure, limit or baseline from the same run, ratio).

Sizes are chosen so the whole run stays under about fifteen minutes on a quiet 2-core machine (the
DKIM-signed sends and the five provider APIs take about half of it); each script also runs alone with
its own options (see its docstring).
"""
from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import providers
import send
import signup
import tick
from common import print_table


def main() -> None:
    start = time.monotonic()
    rows = []
    for name, step in (("send", lambda: send.run(n=10_000, workers=(1, 2, 4))),
                       # the configuration people run: signed with RSA-2048, and with two keys in a rotation
                       ("send, DKIM", lambda: send.run(n=10_000, workers=(1, 2), dkim="rsa")),
                       ("send, DKIM x2", lambda: send.run(n=10_000, workers=(2,), dkim="rsa+ed25519")),
                       ("providers", lambda: providers.run(n=6_000, delay=0.08)),
                       ("signup", lambda: signup.run(seconds=12)),
                       ("tick", lambda: tick.run(memory_due=20_000))):
        t = time.monotonic()
        got = step()
        print(f"[{name}: {time.monotonic() - t:.0f} s]", file=sys.stderr, flush=True)
        print_table(got, out=sys.stderr)  # as it comes, so a later failure does not lose it
        rows += got
    print(f"\nDrip benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {time.monotonic() - start:.0f} s\n")
    print_table(rows)


if __name__ == "__main__":
    main()
