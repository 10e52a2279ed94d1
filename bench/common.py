"""Shared bench helpers: the ~25 KB bench campaign, the SMTP sink process, databases, result rows.

The bench campaign ("tuesday-bench") is generated into a temporary templates folder next to a copy of
the real `_base` layout and `back-pain-bundle`: its one step is the "Tuesday coaching email", the
content blocks of the first five weekly coaching emails in one message, rendered through the real base
layout (CSS inlined, footer, unsubscribe link) and personalised with the reader's name. That gives
about 25 KB on the wire (text + HTML parts, quoted-printable), the message size the send-speed targets
are set for.
"""
from __future__ import annotations

import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PG_ADMIN = os.environ.get("DRIP_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CAMPAIGN = "tuesday-bench"
WEEKS = 5  # weekly content blocks in the bench email: about 25 KB on the wire
SECRET = "bench-secret-key-not-for-production"
POSTAL = "Back Pain Warriors, 12 Bench Street, Springfield"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _block(path: Path) -> str:
    """The inside of `{% block content %}` of one weekly template."""
    body = path.read_text(encoding="utf-8")
    return re.search(r"{% block content %}(.*){% endblock %}", body, re.S).group(1)


def make_templates(dest: Path) -> Path:
    """A templates folder holding the real campaign and the generated ~25 KB bench campaign."""
    src = ROOT / "email_templates"
    shutil.copytree(src / "_base", dest / "_base", dirs_exist_ok=True)
    shutil.copytree(src / "back-pain-bundle", dest / "back-pain-bundle", dirs_exist_ok=True)
    copied = dest / "back-pain-bundle" / "campaign.toml"  # alone here: no digest campaign to point at
    copied.write_text("\n".join(line for line in copied.read_text(encoding="utf-8").splitlines()
                                if not line.startswith(("digest", "invite_"))) + "\n", encoding="utf-8")
    weeks = sorted((src / "back-pain-bundle").glob("week-*.html"))[:WEEKS]
    camp = dest / CAMPAIGN
    camp.mkdir(exist_ok=True)
    for ext, base in (("html", "_base/email.html"), ("txt", "_base/email.txt")):
        blocks = [_block(w.with_suffix(f".{ext}")) for w in weeks]
        extra = "" if ext == "txt" else '{% import "_base/macros.html" as m %}'
        (camp / f"tuesday.{ext}").write_text(
            f'{{% extends "{base}" %}}{extra}{{% block content %}}' + "\n".join(blocks) + "{% endblock %}",
            encoding="utf-8")
    toml = (src / "back-pain-bundle" / "campaign.toml").read_text(encoding="utf-8").split("[[steps]]")[0]
    # The bench copies this one campaign alone: drop links to campaigns it does not copy.
    toml = "\n".join(line for line in toml.splitlines()
                     if not line.startswith(("digest", "continue_", "invite_"))) + "\n"
    (camp / "campaign.toml").write_text(
        toml + '[[steps]]\nkey = "tuesday"\ndelay = "0"\nsubject = "Your Tuesday coaching, {{ subscriber.first_name '
        '}}: nine weeks in one"\ntemplate = "tuesday"\npreheader = "Everything so far, in one email."\n'
        # A list mid-campaign: after this Tuesday's email comes next week's, so each send moves the reader
        # on to a next step (the common case), rather than completing the campaign.
        '[[steps]]\nkey = "next-tuesday"\ndelay = "7d"\nsubject = "Next Tuesday"\ntemplate = "tuesday"\n',
        encoding="utf-8")
    return dest


class SinkProcess:
    """bench/sink.py in its own process (its own core), so the sink never shares a GIL with the sender."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([PY, str(ROOT / "bench" / "sink.py")], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"sink did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"smtp://127.0.0.1:{self.port}?timeout=30"

    def _verb(self, verb: str) -> str:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as c:
            return c.docmd(verb)[1].decode()

    def stats(self) -> tuple[int, int, int]:
        """(messages, distinct recipients, recipients received more than once)."""
        total, distinct, doubles = (int(x) for x in self._verb("XSTAT").split())
        return total, distinct, doubles

    def reset(self) -> None:
        self._verb("XRESET")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@dataclass
class Row:
    """One line of the final table: a figure, its limit or baseline from the same run, their ratio."""

    figure: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    goal: str
    ok: bool

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


def cpu_bound_row(label: str, per_email_us: float, limit_name: str, limit: float) -> Row:
    """What a run bound by CPU alone could reach on this machine: every core busy, divided by the CPU one
    email costs in all the processes the run needs (Drip's workers, PostgreSQL, the sink or the fake API,
    measured in the same run). Reported against the run's limit, so its ratio is the best ratio this
    machine allows the measured code: a goal above it needs less CPU per email, not less waiting."""
    cores = len(os.sched_getaffinity(0))
    return Row(f"  {label}: CPU-bound best, {cores} cores / {per_email_us:,.0f} us", cores * 1e6 / per_email_us,
               "/s", limit_name, limit, "report", True)


def print_table(rows: list[Row], out=sys.stdout) -> None:
    head = f"| {'figure':<44} | {'value':>12} | {'limit or baseline':<40} | {'ratio':>6} | {'goal':<10} | ok |"
    print(head, file=out)
    print("|" + "|".join("-" * (len(c) + 0) for c in head.split("|")[1:-1]) + "|", file=out)
    for r in rows:
        base = f"{r.baseline_name} {r.baseline:,.1f}"
        print(f"| {r.figure:<44} | {r.value:>8,.1f} {r.unit:<3} | {base:<40} | {r.ratio:>6.2f} | {r.goal:<10} | "
              f"{'yes' if r.ok else 'NO '} |", file=out, flush=True)


def pg_create(name: str) -> str:
    """A fresh PostgreSQL database for one bench phase, migrated to head; returns its SQLAlchemy URL."""
    from sqlalchemy import create_engine, text

    from service.core.migrate import upgrade

    name = f"{name}_{os.getpid()}"  # two bench runs at once never share a database
    admin_url = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    return url


def pg_drop(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}_{os.getpid()}" WITH (FORCE)'))
    admin.dispose()


def sqlite_create(path: Path) -> str:
    from service.core.migrate import upgrade

    url = f"sqlite:///{path}"
    upgrade(url)
    return url


def elapsed(start: float) -> float:
    return time.perf_counter() - start


def seed(url: str, *, total: int, due: int, now, campaign: str = CAMPAIGN, pad_name: int = 0) -> None:
    """`total` active subscribers, each enrolled in `campaign`; the first `due` are due at `now`, the rest
    wait for a later step (spread over a week from tomorrow), as in a real list mid-campaign.

    PostgreSQL: COPY (a million rows in seconds); SQLite: executemany in one transaction.
    """
    import secrets
    from datetime import timedelta

    def subscribers():
        for i in range(1, total + 1):
            addr = f"reader{i:07d}@example.com"
            yield (i, secrets.token_urlsafe(12), addr, addr, f"Reader {i}" + "x" * pad_name, "active", now, now)

    def enrollments():
        week = timedelta(days=7)
        for i in range(1, total + 1):
            # the others: due over the next week, but not before tomorrow, so none falls due mid-bench
            when = now if i <= due else now + timedelta(days=1) + week * ((i * 7919) % 10007) / 10007
            yield (i, i, campaign, "active", 0, when, now, now)

    sub_cols = ("id", "public_id", "email", "email_key", "name", "status", "created_at", "updated_at")
    enr_cols = ("id", "subscriber_id", "campaign", "status", "next_step", "next_due_at", "created_at", "updated_at")
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
            with conn.cursor() as cur:
                for table, cols, rows in (("subscribers", sub_cols, subscribers()),
                                          ("enrollments", enr_cols, enrollments())):
                    with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {max(total, 1)})")
                cur.execute("ANALYZE subscribers; ANALYZE enrollments")
        return
    import sqlite3

    path = url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)

    def naive(rows):
        for row in rows:
            # SQLAlchemy's SQLite format (naive UTC, microseconds always), so string comparison orders it
            yield tuple(v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if hasattr(v, "tzinfo") else v for v in row)

    with conn:
        conn.executemany(f"INSERT INTO subscribers ({', '.join(sub_cols)}) VALUES (?,?,?,?,?,?,?,?)",  # noqa: S608 (constant names)
                         naive(subscribers()))
        conn.executemany(f"INSERT INTO enrollments ({', '.join(enr_cols)}) VALUES (?,?,?,?,?,?,?,?)",  # noqa: S608 (constant names)
                         naive(enrollments()))
        conn.execute("ANALYZE")
    conn.close()


def seed_history(url: str, *, first: int, last: int, now) -> None:
    """One `sent` message per enrollment first..last: the history a list mid-campaign carries, so the
    claim query has a large messages table to ignore. PostgreSQL: COPY; SQLite: executemany."""
    def rows():
        for i in range(first, last + 1):
            yield (i, i, i, CAMPAIGN, "history", 0, f"reader{i:07d}@example.com", "sent", 1, f"<h{i}@bench>",
                   now, now, now)

    cols = ("id", "enrollment_id", "subscriber_id", "campaign", "step_key", "step_index", "to_email", "status",
            "attempts", "message_id", "created_at", "updated_at", "sent_at")
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn, conn.cursor() as cur:
            with cur.copy(f"COPY messages ({', '.join(cols)}) FROM STDIN") as copy:
                for row in rows():
                    copy.write_row(row)
            cur.execute(f"SELECT setval(pg_get_serial_sequence('messages', 'id'), {max(last, 1)})")
            cur.execute("ANALYZE messages")
        return
    import sqlite3

    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    stamp = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with conn:
        conn.executemany(f"INSERT INTO messages ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",  # noqa: S608
                         (r[:10] + (stamp, stamp, stamp) for r in rows()))
        conn.execute("ANALYZE")
    conn.close()


def cpu_seconds(pids) -> float:
    """User + system CPU seconds used so far by the processes `pids` (Linux /proc), for per-email CPU."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process has ended
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    return total


def postgres_pids() -> list[int]:
    """The local PostgreSQL server's processes (this machine runs it; its CPU is part of each email)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids
