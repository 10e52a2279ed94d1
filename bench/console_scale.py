"""The operator's console on a year-old database: every view, the API, the CLI, a worker's idle tick, the
pruning and the exports, timed against the goals.

A PostgreSQL database is seeded in SQL (generate_series; no ORM, no Python per row) to the shape of a
publisher after one year: `--readers` readers (5 % unsubscribed, 1 % bounced), every one in the weekly
back-pain-bundle campaign and one in five also in the monthly newsletter, one message per step they have
reached (weekly since they joined, spread over the year), `--events` events per message, a stored copy
of each message, and a consent per enrollment. The count triggers are off while seeding; `drip stats
--rebuild` then fills the maintained counts (and is timed). ANALYZE runs as autovacuum would have.

Timed, each `--runs` times (median and p95), in-process through the Flask test client with a logged-in
operator or an API token: the campaign list and page, the send log (first page, by status, by campaign
and step, an exact address, an address's start, a date range months back, page 50 of a filter), a
message, the subscriber search and page, the home page, /metrics and the API's equivalents. Once each,
as real `drip` processes: `drip stats`, `drip tick` with nothing due (the first start after the deploy,
which checks the campaigns for added steps, and a later one), `drip prune --days 180` (wall time, peak
RSS, WAL written) and `drip log --csv` of the whole log; the step export through the admin's CSV route.
`--explain` prints EXPLAIN (ANALYZE, BUFFERS) of every query of each view.
The forecast: the worker's background replay is timed once (it stores the forecast the home page then
reads), `drip forecast`'s own work on the stored one `--runs` times, and `drip forecast` as a process.
`--views-only` leaves out the exports and the pruning. `--tracking` runs with open and click tracking on
(`DRIP_TRACKING`), so the home page shows each step's open and click rates; seed with `--events 6` for
opens and clicks to count.

Seeding a million readers takes ~10 minutes of both cores: `--seed-only` seeds, fills the counts and stops,
keeping the database (its name is printed); `--database NAME` then reuses it: no seeding, the migrations run
(a newer branch's schema changes and fills), then `drip stats --rebuild`, then the timings. A reused
database is not the same after a full run: `drip prune --days 180` deleted half a year of history, so reuse
it with `--views-only`, or seed a fresh one.

    .venv/bin/python bench/console_scale.py [--readers 1000000] [--events 4] [--runs 20] [--keep] [--explain]
                                            [--views-only] [--tracking] [--seed-only | --database NAME]

Goals (docs/performance.md): every console and API view p95 < 200 ms; /metrics < 50 ms; `drip tick` with
nothing due < 1 s including start-up; `drip prune` peak RSS < 150 MB with batches of at most 10,000 rows;
the whole-log CSV export at >= 100,000 rows/s.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PG_ADMIN, ROOT, SECRET, pg_create, pg_drop


def step_keys(campaign: str) -> list[str]:
    """The campaign's step keys as the real files have them, so the seeded readers are where a worker
    that loads those files expects them (a completed reader has had every step)."""
    from service.campaigns.loader import load_campaigns

    return [s.key for s in load_campaigns(ROOT / "email_templates")[campaign].steps]


def seed_sql(readers: int, events: int) -> list[tuple[str, str]]:
    """(what, statement) in order; :now is the moment the database is "a year old" at."""
    n = readers
    bpb_keys, news_keys = step_keys("back-pain-bundle"), step_keys("monthly-newsletter")
    bpb = "ARRAY[" + ",".join(f"'{k}'" for k in bpb_keys) + "]"
    news = "ARRAY[" + ",".join(f"'{k}'" for k in news_keys) + "]"
    joined = f"(:now - interval '365 days' + (g::float8 / {n}) * interval '365 days')"
    return [
        ("subscribers", f"""
INSERT INTO subscribers (id, public_id, email, email_key, name, status, created_at, updated_at, unsubscribed_at)
SELECT g, md5('s' || g), 'reader' || g || '@mail' || (g % 97) || '.example.com',
       'reader' || g || '@mail' || (g % 97) || '.example.com', 'Reader ' || g,
       CASE WHEN g % 20 = 7 THEN 'unsubscribed' WHEN g % 100 = 3 THEN 'bounced' ELSE 'active' END,
       {joined}, {joined}, CASE WHEN g % 20 = 7 THEN {joined} + interval '40 days' END
FROM generate_series(1, {n}) AS g"""),  # noqa: S608 - sizes only, no input
        ("enrollments", f"""
INSERT INTO enrollments (id, subscriber_id, campaign, status, next_step, next_step_key, next_due_at, due_from,
                         last_sent_at, created_at, updated_at)
SELECT e.id, s.id, e.campaign,
       CASE WHEN s.status <> 'active' THEN 'stopped' WHEN e.reached >= e.steps THEN 'completed' ELSE 'active' END,
       least(e.reached, e.steps - 1), NULL,
       CASE WHEN s.status = 'active' AND e.reached < e.steps THEN :now + interval '3 days' END,
       NULL, s.created_at + (e.reached - 1) * e.every, s.created_at, :now
FROM subscribers s
CROSS JOIN LATERAL (VALUES
    (s.id, 'back-pain-bundle', {len(bpb_keys)}, interval '7 days',
     least({len(bpb_keys)}, 1 + floor(extract(epoch FROM :now - s.created_at) / (7 * 86400))::int)),
    (CASE WHEN s.id % 5 = 0 THEN {n} + s.id / 5 END, 'monthly-newsletter', {len(news_keys)}, interval '30 days',
     least({len(news_keys)}, 1 + floor(extract(epoch FROM :now - s.created_at) / (30 * 86400))::int))
) AS e (id, campaign, steps, every, reached)
WHERE e.id IS NOT NULL"""),  # noqa: S608 - sizes only, no input
        ("consents", """
INSERT INTO consents (subscriber_id, campaign, created_at, source, wording)
SELECT subscriber_id, campaign, created_at, 'form', 'Yes, send me the emails.' FROM enrollments ORDER BY id"""),
        ("messages", f"""
INSERT INTO messages (enrollment_id, subscriber_id, campaign, step_key, step_index, to_email, subject, status,
                      attempts, message_id, created_at, updated_at, first_attempt_at, sent_at, last_error,
                      opened_at, clicked_at)
SELECT e.id, e.subscriber_id, e.campaign, k.key, k.i, s.email, 'Step ' || k.key, k.status, 1,
       '<' || md5(e.id || '-' || k.i) || '@drip.bench>', k.at, k.at + interval '2 minutes', k.at,
       CASE WHEN k.status <> 'failed' THEN k.at + interval '1 minute' END,
       CASE WHEN k.status IN ('failed', 'bounced') THEN '550 5.1.1 mailbox unavailable' END,
       CASE WHEN {events} >= 5 THEN k.at + interval '5 seconds' END,
       CASE WHEN {events} >= 6 THEN k.at + interval '6 seconds' END
FROM enrollments e JOIN subscribers s ON s.id = e.subscriber_id
CROSS JOIN LATERAL (
    SELECT i, CASE WHEN e.campaign = 'back-pain-bundle' THEN ({bpb})[i + 1] ELSE ({news})[i + 1] END AS key,
           s.created_at + i * (CASE WHEN e.campaign = 'back-pain-bundle' THEN interval '7 days'
                                    ELSE interval '30 days' END) AS at,
           CASE WHEN (e.id * 7 + i * 13) % 1000 < 3 THEN 'complained'
                WHEN (e.id * 7 + i * 13) % 1000 < 13 THEN 'bounced'
                WHEN (e.id * 7 + i * 13) % 1000 < 30 THEN 'failed'
                WHEN (e.id * 7 + i * 13) % 1000 < 120 THEN 'sent'
                ELSE 'delivered' END AS status
    FROM generate_series(0, e.next_step) AS i
) AS k
WHERE k.at < :now
ORDER BY k.at"""),  # noqa: S608 - sizes only, no input
        ("events", f"""
INSERT INTO events (subscriber_id, message_id, type, detail, created_at)
SELECT m.subscriber_id, m.id, (ARRAY['queued', 'attempt', 'sent', 'delivered', 'opened', 'clicked'])[x],
       'bench', m.created_at + x * interval '1 second'
FROM messages m CROSS JOIN generate_series(1, {events}) AS x"""),  # noqa: S608 - sizes only, no input
        ("stored copies", """
INSERT INTO message_contents (message_id, raw, created_at)
SELECT id, convert_to(repeat('Subject: bench' || chr(10), 24), 'UTF8'), created_at FROM messages"""),
    ]


BULK = ("messages", "events", "message_contents")


def seed(url: str, readers: int, events: int, now: datetime) -> dict[str, float]:
    """Bulk load as a restore would: the large tables' secondary indexes and unique constraints are dropped
    first and built once at the end (faster than maintaining them row by row), and the session runs with
    `session_replication_role = replica`, which skips the foreign-key checks and the count triggers for
    the seed's own statements (the counts are rebuilt afterwards, by `drip stats --rebuild`)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    took: dict[str, float] = {}
    with engine.begin() as conn:
        constraints = conn.execute(text(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE contype = 'u' AND conrelid::regclass::text = ANY(:t)"), {"t": list(BULK)}).all()
        owned = {name for _t, name, _d in constraints}
        indexes = [(name, sql) for name, sql in conn.execute(text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(:t) AND indexname NOT LIKE 'pk_%'"),
            {"t": list(BULK)}) if name not in owned]
        for table, name, _d in constraints:
            conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
        for name, _sql in indexes:
            conn.execute(text(f'DROP INDEX "{name}"'))
    with engine.connect() as conn:
        conn.execute(text("SET session_replication_role = replica"))
        for what, sql in seed_sql(readers, events):
            t = time.monotonic()
            conn.execute(text(sql), {"now": now})
            conn.commit()
            took[what] = time.monotonic() - t
            print(f"seed: {what} in {took[what]:.1f} s", file=sys.stderr, flush=True)
    t = time.monotonic()
    with engine.begin() as conn:
        conn.execute(text("SET maintenance_work_mem = '256MB'"))
        for table, name, definition in constraints:
            conn.execute(text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'))
        for _name, sql in indexes:
            conn.execute(text(sql))
        for table in ("subscribers", "enrollments", "messages", "events", "consents"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608 - our table names
                              f"(SELECT coalesce(max(id), 1) FROM {table}))"))
    took["indexes"] = time.monotonic() - t
    print(f"seed: indexes in {took['indexes']:.1f} s", file=sys.stderr, flush=True)
    t = time.monotonic()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    took["vacuum analyze"] = time.monotonic() - t
    engine.dispose()
    return took


class Ran:
    """One `drip` process: wall seconds, CPU seconds (user + system), peak RSS in bytes, exit code, stderr.

    Measured by /usr/bin/time around the command: the rusage of a child forked from this (large) bench
    process would count the parent's pages it shares until exec."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "time"
            t = time.monotonic()
            proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(report),
                                   str(ROOT / ".venv" / "bin" / "drip"), *args], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
            self.seconds = time.monotonic() - t
            kb, user, system = report.read_text().split()[-3:]
        self.stderr = proc.stderr.decode(errors="replace")
        self.cpu = float(user) + float(system)
        self.rss = int(kb) * 1024
        self.code = proc.returncode
        if self.code:
            print(f"drip {' '.join(args)} exited {self.code}: {self.stderr[-2000:]}", file=sys.stderr)


def wal_lsn(conn) -> int:
    from sqlalchemy import text

    return int(conn.execute(text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")).scalar())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]


def explain(engine, action) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of every SELECT `action` runs."""
    from sqlalchemy import event

    seen: list[tuple[str, object]] = []

    def keep(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))
    event.listen(engine, "before_cursor_execute", keep)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    out = []
    with engine.connect() as conn:
        for statement, parameters in seen:
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
            out.append(" ".join(statement.split())[:300] + "\n    " + "\n    ".join(r[0] for r in rows))
        conn.rollback()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=4, help="events per message (1-6)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--views-only", action="store_true",
                        help="time the views, the forecast and `drip tick` only (no exports, no prune)")
    parser.add_argument("--tracking", action="store_true",
                        help="open and click tracking on (DRIP_TRACKING): the home page counts opens and clicks")
    parser.add_argument("--seed-only", action="store_true", help="seed, fill the counts, keep the database, stop")
    parser.add_argument("--database", metavar="NAME",
                        help="reuse this kept database: no seeding; migrations, then `drip stats --rebuild`")
    args = parser.parse_args()
    if args.seed_only and args.database:
        parser.error("--seed-only makes a database, --database reuses one: not both")
    args.keep = args.keep or args.seed_only or bool(args.database)

    from sqlalchemy import create_engine, func, select, text

    from service.app import create_app
    from service.core.config import Settings
    from service.core.models import Message, Subscriber
    from service.operator import forecast as forecasting
    from service.operator.accounts import add_user, create_token
    from service.runtime import build_runtime

    now = datetime.now(UTC).replace(microsecond=0)
    name = "drip_console_scale"
    started = time.monotonic()
    if args.database:
        from service.core.migrate import upgrade

        url = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1).rsplit("/", 1)[0] + f"/{args.database}"
        upgrade(url)
        took = {"migrations": time.monotonic() - started}
    else:
        url = pg_create(name)
        took = seed(url, args.readers, max(1, min(6, args.events)), now)
    seeded = time.monotonic() - started
    env = {**os.environ, "DATABASE_URL": url.replace("postgresql+psycopg://", "postgresql://"),
           "DRIP_SECRET_KEY": SECRET, "DRIP_EMAIL_URL": "file:///tmp/drip-console-scale-outbox",
           "DRIP_BASE_URL": "https://drip.example.org", "DRIP_POSTAL_ADDRESS": "Bench, 1 Street, Town",
           "DRIP_TRACKING": "1" if args.tracking else "0"}
    rows: list[tuple[str, str, str, str, bool]] = []  # figure, value, goal, note, ok

    rebuild = Ran(["stats", "--rebuild"], env)
    engine = create_engine(url)
    with engine.connect() as conn:
        size = conn.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar()
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()  # noqa: S608
                  for t in ("subscribers", "enrollments", "messages", "events", "message_contents")}
    print(f"seeded in {seeded:.0f} s: {counts}, {size}", file=sys.stderr, flush=True)
    if args.database:
        args.readers = counts["subscribers"]
    if args.seed_only:
        engine.dispose()
        print(f"kept: {url}\nreuse: bench/console_scale.py --database {url.rsplit('/', 1)[1]}")
        return

    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith(("DATABASE_URL", "DRIP_"))})
    rt = build_runtime(settings)
    app = create_app(runtime=rt)
    client = app.test_client()
    with rt.sessions() as s, s.begin():
        add_user(s, "ops@example.org", "a long bench password", now=now, reset_password=True)  # (a reused database)
        token = create_token(s, "bench", now=now)
    with rt.sessions() as s:
        some = s.scalar(select(Subscriber).where(Subscriber.id == args.readers // 3))
        address, sub_id = some.email, some.id
        mid = s.scalar(select(func.max(Message.id)))
        old_day = (now.date().toordinal() - 200)
    # The worker's background job stores the forecast (the home page and `drip forecast` read it on a list this
    # large): how long the replay of every waiting reader takes.
    t = time.perf_counter()
    ahead = forecasting.refresh(rt.dispatcher(), rt.sessions, now=datetime.now(UTC), force=True)
    replay_s = time.perf_counter() - t
    rows.append(("worker: forecast replayed and stored (background job)", f"{replay_s * 1000:,.0f} ms", "report",
                 f"{len(ahead.emails):,} emails in the next {forecasting.STORED_REACH.total_seconds() / 86400:g} "
                 f"days; at most every {forecasting.REFRESH_EVERY.total_seconds() / 60:.0f} min", True))
    print(f"forecast stored in {replay_s:.1f} s", file=sys.stderr, flush=True)
    page = client.get("/admin/login").data.decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    client.post("/admin/login", data={"email": "ops@example.org", "password": "a long bench password", "csrf": csrf})
    api = {"Authorization": f"Bearer {token}"}
    day = datetime.fromordinal(old_day).date().isoformat()
    day2 = datetime.fromordinal(old_day + 6).date().isoformat()
    prefix = address.split("@")[0][:-1]
    views = [
        ("console: campaigns", "/admin/campaigns", None),
        ("console: campaign page (stats + charts)", "/admin/campaigns/back-pain-bundle", None),
        ("console: home" + (" (tracking on)" if args.tracking else ""), "/admin/", None),
        ("console: send log, first page", "/admin/messages", None),
        ("console: send log, bounced", "/admin/messages?status=bounced", None),
        ("console: send log, campaign + step", "/admin/messages?campaign=back-pain-bundle&step=week-04", None),
        ("console: send log, exact address", f"/admin/messages?email={address}", None),
        ("console: send log, an address's start", f"/admin/messages?email={prefix}", None),
        ("console: send log, a week 200 days back", f"/admin/messages?since={day}&until={day2}", None),
        ("console: one message", f"/admin/messages/{mid // 2}", None),
        ("console: subscriber search by address", f"/admin/subscribers?q={address}", None),
        ("console: one subscriber (timeline)", f"/admin/subscribers/{sub_id}", None),
        ("api: campaigns", "/api/v1/campaigns", api),
        ("api: one campaign", "/api/v1/campaigns/back-pain-bundle", api),
        ("api: send log, exact address", f"/api/v1/messages?email={address}", api),
        ("api: send log, date range", f"/api/v1/messages?since={day}&until={day2}", api),
        ("/metrics", "/metrics", None),
    ]
    # Page 50 of a filtered send log: follow the cursor 49 times, then time the 50th page.
    cursor = ""
    for _ in range(49):
        found = re.search(r"before=(\d+)", client.get(f"/admin/messages?status=delivered{cursor}").data.decode())
        if not found:
            break
        cursor = f"&before={found.group(1)}"
    views.insert(6, ("console: send log, page 50 (delivered)", f"/admin/messages?status=delivered{cursor}", None))
    for figure, path, headers in views:
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            r = client.get(path, headers=headers or {}, follow_redirects=True)
            times.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, (path, r.status_code)
        limit = 50 if path == "/metrics" else 200
        p95 = percentile(times, 0.95)
        rows.append((figure, f"p50 {statistics.median(times):.1f} ms, p95 {p95:.1f} ms", f"p95 < {limit} ms", "",
                     p95 < limit))
        print(f"{figure}: p95 {p95:.1f} ms", file=sys.stderr, flush=True)
        if args.explain:
            print(f"\n## {figure}\n" + "\n".join(explain(rt.sessions.kw["bind"], lambda p=path, h=headers:
                                                         client.get(p, headers=h or {}))))

    # `drip forecast`'s own work on a large list: the stored forecast for the next 7 days, grouped by day.
    times = []
    dispatcher = rt.dispatcher()
    for _ in range(args.runs):
        t = time.perf_counter()
        with rt.sessions() as s:
            now_ = datetime.now(UTC)
            found = forecasting.stored(dispatcher, s, now=now_, end=forecasting.horizon(now_, "Europe/Paris"))
            found.by_day("Europe/Paris", rt.campaigns)
        times.append((time.perf_counter() - t) * 1000)
    p95 = percentile(times, 0.95)
    rows.append(("forecast: stored, 7 days by day (in-process)", f"p50 {statistics.median(times):.1f} ms, "
                 f"p95 {p95:.1f} ms", "p95 < 200 ms", "what `drip forecast` does after its start-up", p95 < 200))

    # The CLI, as real processes (start-up included). Wall time on this shared machine includes waiting for a
    # core; the CPU time of the process is given beside it.
    def cli(figure: str, run: Ran, goal: str, ok: bool, note: str = "") -> None:
        rows.append((figure, f"{run.seconds * 1000:,.0f} ms (CPU {run.cpu * 1000:,.0f} ms)", goal, note,
                     ok and run.code == 0))

    cli("cli: drip forecast", Ran(["forecast"], env), "report", True, "the stored forecast; incl. start-up")
    cli("cli: drip stats", Ran(["stats"], env), "report", True, "incl. start-up")
    cli("cli: drip tick, first start after the deploy", Ran(["tick"], env), "report", True,
        "checks the campaigns for added steps, once per edit")
    ticks = sorted((Ran(["tick"], env) for _ in range(3)), key=lambda r: r.seconds)
    cli("cli: drip tick, nothing due", ticks[1], "< 1000 ms", ticks[1].seconds < 1.0, "median of 3, incl. start-up")
    passes = []
    for _ in range(3):
        t = time.perf_counter()
        rt.dispatcher().run_pass()
        passes.append(time.perf_counter() - t)
    rows.append(("a worker's pass, nothing due (in-process)", f"{statistics.median(passes) * 1000:,.0f} ms",
                 "report", "what `drip tick` does after its start-up; median of 3", True))
    cli("cli: drip stats --rebuild", rebuild, "report", True, "recounts every table")
    bare = Ran(["--help"], env)
    cli("cli: drip --help (start-up alone)", bare, "report", True, "the floor of every command above")

    if args.views_only:
        return report(args, rows, counts, size, seeded, took, url, name, engine, rt)
    # Exports: one step through the admin's CSV route, the whole log through `drip log --csv`.
    t = time.perf_counter()
    r = client.get("/admin/messages.csv?campaign=back-pain-bundle&step=week-04")
    step_rows = r.get_data(as_text=True).count("\n") - 1
    step_s = time.perf_counter() - t
    rows.append(("export: one step, admin CSV", f"{step_rows / step_s:,.0f} rows/s", "report",
                 f"{step_rows:,} rows in {step_s:.2f} s", True))
    with tempfile.TemporaryDirectory() as tmp:
        run = Ran(["log", "--csv", str(Path(tmp) / "log.csv")], env)
    done = re.search(r"exported ([\d,]+) messages in ([\d.]+) s \(([\d,]+)/s\)", run.stderr)
    lines, seconds, rate = ((int(done.group(1).replace(",", "")), float(done.group(2)),
                             int(done.group(3).replace(",", ""))) if done else (0, 0.0, 0))
    rows.append(("export: whole log, drip log --csv", f"{rate:,.0f} rows/s", ">= 100,000 rows/s",
                 f"{lines:,} rows in {seconds:.1f} s (process: {run.seconds:.1f} s, CPU {run.cpu:.1f} s, "
                 f"peak RSS {run.rss / 2**20:.0f} MB)", rate >= 100_000 and run.code == 0))

    # Prune: half a year of history goes, in batches.
    with engine.connect() as conn:
        before = wal_lsn(conn)
        ev_before = conn.execute(text("SELECT count(*) FROM events")).scalar()
        mc_before = conn.execute(text("SELECT count(*) FROM message_contents")).scalar()
    run = Ran(["prune", "--days", "180"], env)
    with engine.connect() as conn:
        wal = wal_lsn(conn) - before
        ev_deleted = ev_before - conn.execute(text("SELECT count(*) FROM events")).scalar()
        mc_deleted = mc_before - conn.execute(text("SELECT count(*) FROM message_contents")).scalar()
    rows.append(("cli: drip prune --days 180", f"{run.seconds:.1f} s, peak RSS {run.rss / 2**20:.0f} MB",
                 "RSS < 150 MB", f"{ev_deleted:,} events, {mc_deleted:,} stored copies; WAL {wal / 2**20:,.0f} MB "
                 "in transactions of <= 10,000 rows", run.code == 0 and run.rss < 150 * 2**20))
    report(args, rows, counts, size, seeded, took, url, name, engine, rt)


def report(args, rows, counts, size, seeded, took, url, name, engine, rt) -> None:
    engine.dispose()
    rt.sessions.kw["bind"].dispose()
    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, bench/console_scale.py --readers {args.readers} "
          f"--events {args.events} --runs {args.runs}{' --tracking' if args.tracking else ''}"
          f"{' --database ' + args.database if args.database else ''}; PostgreSQL {size}: "
          + ", ".join(f"{n:,} {t}" for t, n in counts.items())
          + f"; seeded in {seeded:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in took.items())})\n")
    print("| view | time | goal | note | met |\n|---|---|---|---|---|")
    for figure, value, goal, note, ok in rows:
        print(f"| {figure} | {value} | {goal} | {note} | {'yes' if ok else 'NO'} |")
    if args.keep:
        print(f"\nkept: {url}" + ("" if args.database else f"\nreuse: --database {url.rsplit('/', 1)[1]}"))
    else:
        pg_drop(name)


if __name__ == "__main__":
    main()
