"""`drip log` (the send log as a table, with the admin page's filters), `drip stats` (campaign health) and
`drip forecast` (what goes out in the next days)."""
from __future__ import annotations

import json

import click

from service.commands.context import load_runtime, load_settings

STATUSES = ("queued", "sending", "sent", "deferred", "failed", "bounced", "suppressed", "delivered", "complained")


def _cell(text: object, width: int) -> str:
    value = " ".join(str(text if text is not None else "").split())
    return (value[: width - 1] + "…" if len(value) > width else value).ljust(width)


def _export_csv(rt, flt, path: str) -> None:
    """The whole filtered log as CSV with a progress line on standard error: PostgreSQL's COPY streams it
    at the database's speed; SQLite goes a keyset page at a time."""
    import contextlib
    import csv
    import sys
    import time

    from service.operator.send_log import CSV_COLUMNS, copy_csv, export_pages

    started = shown = time.monotonic()

    def progress(done: int) -> None:
        nonlocal shown
        if time.monotonic() - shown >= 0.5:
            shown = time.monotonic()
            click.echo(f"\rexported {done:,} messages ({done / (shown - started):,.0f}/s)", err=True, nl=False)

    done = 0
    with (open(path, "w", encoding="utf-8", newline="") if path != "-"
          else contextlib.nullcontext(sys.stdout)) as out:
        csv.writer(out).writerow(CSV_COLUMNS)
        if rt.sessions.kw["bind"].dialect.name == "postgresql":
            out.flush()
            binary = out.buffer if hasattr(out, "buffer") else None
            with rt.sessions() as session:
                if binary is not None:
                    done = copy_csv(session, flt, binary.write, progress=progress)
                else:
                    done = copy_csv(session, flt, lambda b: out.write(b.decode("utf-8")), progress=progress)
        else:
            writer = csv.writer(out)
            for page in export_pages(rt.sessions, flt):
                writer.writerows(page)
                done += len(page)
                progress(done)
    seconds = max(time.monotonic() - started, 1e-9)
    click.echo(f"\rexported {done:,} messages in {seconds:.1f} s ({done / seconds:,.0f}/s)", err=True)


def register(main: click.Group) -> None:

    @main.command("log")
    @click.option("--status", type=click.Choice(STATUSES))
    @click.option("--campaign")
    @click.option("--step")
    @click.option("--email", help="the address, or its start (e.g. ann@ or ann@example)")
    @click.option("--since", help="created on or after this UTC day (YYYY-MM-DD)")
    @click.option("--until", help="created on or before this UTC day (YYYY-MM-DD)")
    @click.option("--before", type=int, help="only messages with a smaller id (paging)")
    @click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="one JSON object per line instead of a table")
    @click.option("--csv", "csv_path", type=click.Path(dir_okay=False, allow_dash=True),
                  help="write every matching message (not one page) as CSV to this file ('-': standard output)")
    def log_cmd(as_json: bool, csv_path: str | None, **filters: object) -> None:
        """The send log, newest first."""
        from service.operator.send_log import MessageFilter, list_messages, message_dict

        for name in ("since", "until"):
            value = filters.get(name)
            if value and getattr(MessageFilter.from_args({name: str(value)}), name) is None:
                raise click.BadParameter(f"not a date: {value!r}", param_hint=f"--{name}")
        args = {k: str(v) for k, v in filters.items() if v is not None}
        rt = load_runtime(load_settings())
        if csv_path:
            _export_csv(rt, MessageFilter.from_args(args), csv_path)
            return
        with rt.sessions() as session:
            page = list_messages(session, MessageFilter.from_args(args))
            rows = [message_dict(m) for m in page.rows]
        if as_json:
            for row in rows:
                click.echo(json.dumps(row))
            return
        cols = (("id", 7), ("created_at", 17), ("to", 30), ("campaign", 20), ("step", 14), ("status", 10),
                ("attempts", 3), ("last_error", 40))
        click.echo(" ".join(_cell(h if h != "attempts" else "try", w) for h, w in cols).rstrip())
        for row in rows:
            row["created_at"] = (row["created_at"] or "")[:16].replace("T", " ")
            click.echo(" ".join(_cell(row[h], w) for h, w in cols).rstrip())
        if page.next_before:
            click.echo(f"(more: --before {page.next_before})")

    @main.command("stats")
    @click.option("--json", "as_json", is_flag=True, help="JSON, the shape of GET /api/v1/campaigns")
    @click.option("--rebuild", is_flag=True,
                  help="recount the maintained counts from the tables first (after a restore; writes pause meanwhile)")
    @click.option("--check", is_flag=True, help="compare the maintained counts with a recount; exit 1 if any differ")
    def stats_cmd(as_json: bool, rebuild: bool, check: bool) -> None:
        """Campaign health: enrollments, and per step what was sent, delivered, bounced, failed, unsubscribed."""
        from service.core import counts
        from service.core.db import utcnow
        from service.operator.campaign_stats import all_stats, stats_dict

        rt = load_runtime(load_settings())
        if rebuild:
            with rt.sessions() as session, session.begin():
                counts.rebuild(session)
            click.echo("stats: maintained counts rebuilt from the tables", err=as_json)
        if check:
            with rt.sessions() as session:
                wrong = counts.mismatches(session)
            for line in wrong:
                click.echo(f"stats: {line}", err=True)
            if wrong:
                raise click.exceptions.Exit(1)
            click.echo("stats: maintained counts equal a recount", err=as_json)
            return
        with rt.sessions() as session, session.begin():
            counts.fold(session)  # PostgreSQL: the changes of the last seconds into the count tables
        with rt.sessions() as session:
            stats = all_stats(session, rt.campaigns, now=utcnow())
        if as_json:
            click.echo(json.dumps([stats_dict(c) for c in stats], indent=2))
            return
        for c in stats:
            state = "PAUSED" if c.paused else "running"
            e = c.enrollments
            click.echo(f"{c.key} ({state}): {e.get('active', 0)} active, {e.get('completed', 0)} completed, "
                       f"{e.get('stopped', 0)} stopped")
            click.echo("  " + " ".join(_cell(h, w) for h, w in (("step", 22), ("wait", 6), ("sent", 6),
                       ("deliv", 6), ("bounce", 6), ("compl", 6), ("failed", 6), ("unsub", 6))).rstrip())
            for s in c.steps:
                cells = ((f"{s.index + 1}. {s.key}", 22), (s.pending, 6), (s.sent, 6), (s.delivered, 6),
                         (s.bounced, 6), (s.complained, 6), (s.failed, 6), (s.unsubscribed_after, 6))
                click.echo("  " + " ".join(_cell(v, w) for v, w in cells).rstrip())

    @main.command("forecast")
    @click.option("--days", type=click.IntRange(1, 31), default=7, show_default=True, help="today and the days after")
    @click.option("--tz", "tz_name", default="UTC", show_default=True,
                  help="the zone whose days the emails are counted in")
    @click.option("--json", "as_json", is_flag=True, help="one JSON object per day and step")
    @click.option("--fresh", is_flag=True,
                  help="replay every reader's schedule now (and store it), even when the worker stored one")
    def forecast_cmd(days: int, tz_name: str, as_json: bool, fresh: bool) -> None:
        """What goes out in the next days, per day and campaign step: the console home page's forecast. On a
        large list this is the one the worker stored (it says when); with none stored, or --fresh, it is
        replayed now and stored for the home page."""
        from zoneinfo import ZoneInfo

        from service.campaigns.schedule import valid_timezone
        from service.core.db import utcnow
        from service.operator import forecast as forecasting

        if not valid_timezone(tz_name):
            raise click.BadParameter(f"not a time zone: {tz_name!r} (an IANA name such as Europe/Paris)",
                                     param_hint="--tz")
        rt = load_runtime(load_settings())
        now = utcnow()
        end = forecasting.horizon(now, tz_name, days=days)
        d = rt.dispatcher()
        with rt.sessions() as session:
            small = forecasting.waiting(d, session, end, forecasting.INLINE_LIMIT) <= forecasting.INLINE_LIMIT
            ahead = None if fresh or small else forecasting.stored(d, session, now=now, end=end)
            if ahead is None and (small or end > now + forecasting.STORED_REACH):
                ahead = forecasting.forecast(d, session, now=now, end=end)
        if ahead is None:  # a large list and nothing stored (or --fresh): replay it, and store it for the console
            forecasting.refresh(d, rt.sessions, now=now, force=True)
            with rt.sessions() as session:
                ahead = forecasting.stored(d, session, now=now, end=end)
            ahead.computed_at = None  # computed just now, not an older figure
        grouped = ahead.by_day(tz_name, rt.campaigns)
        if as_json:
            for _day, rows in grouped:
                for r in rows:
                    click.echo(json.dumps({"day": r.day.isoformat(), "campaign": r.campaign, "step": r.step_key,
                                           "subject": r.subject, "emails": r.count}))
            return
        if ahead.computed_at is not None:
            click.echo(f"as of {ahead.computed_at.astimezone(ZoneInfo(tz_name)):%Y-%m-%d %H:%M %Z} (stored by "
                       f"the worker; --fresh replays it now)")
        if ahead.sending_paused:
            click.echo(f"sending is paused ({ahead.sending_paused}): nothing goes out until `drip sending resume`")
        for day, rows in grouped:
            click.echo(f"{day:%a %Y-%m-%d}: {sum(r.count for r in rows)} email(s)")
            for r in rows:
                click.echo(f"  {r.count:>6}  {_cell(r.campaign + ' / ' + r.step_key, 36)} {r.subject}".rstrip())
        if ahead.paused_campaigns:
            click.echo(f"paused campaigns (nothing of theirs counted): {', '.join(ahead.paused_campaigns)}")
