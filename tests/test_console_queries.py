"""The console's filters at any size: an address by its start through the subscribers' index, a date range
in (created_at, id) order with a working cursor, the CSV export in keyset pages, and the plan of each of
these queries checked with EXPLAIN, so a change that turns one into a full table scan fails here."""
from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from click.testing import CliRunner
from conftest import at
from sqlalchemy import event, select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.cli import main
from service.core.models import Message
from service.operator.send_log import MessageFilter, export_pages, list_messages
from service.operator.subscribers import SubscriberFilter, list_subscribers

T0 = at("2026-03-02T15:00:00")
READERS = ("ann@example.org", "Anna.B@example.org", "joann@example.org", "bob@example.net", "bo@example.com")


@pytest.fixture
def history(runtime, smtp):
    """Five readers joining a day apart; each pass sends the due welcomes, so messages span five days."""
    for i, address in enumerate(READERS):
        data = parse_signup({"email": address}, campaigns=runtime.campaigns, default_campaign="back-pain-bundle")
        with runtime.sessions() as s, s.begin():
            signup(s, data, campaign=runtime.campaigns["back-pain-bundle"], meta=ConsentMeta("json"),
                   now=T0 + timedelta(days=i))
        runtime.dispatcher().run_pass(T0 + timedelta(days=i, minutes=1))
    return runtime


def addresses(rows) -> list[str]:
    return [m.to_email for m in rows]


def test_address_filter_is_the_start_of_an_address(history) -> None:
    with history.sessions() as s:
        def found(text: str) -> set[str]:
            return set(addresses(list_messages(s, MessageFilter(email=text, limit=500)).rows))
        assert found("ann@") == {"ann@example.org"}  # not joann@: a start, not any fragment
        assert found("ANN") == {"ann@example.org", "Anna.B@example.org"}  # case does not matter
        assert found("anna.b@example.org") == {"Anna.B@example.org"}  # the whole address
        assert found("bo") == {"bob@example.net", "bo@example.com"}
        assert found("@example.org") == set()  # a domain alone is not the start of an address
        assert found("100%_\\") == set()  # LIKE's own characters are plain text
        subs = {x.email for x in list_subscribers(s, SubscriberFilter(q="jo")).rows}
        assert subs == {"joann@example.org"}
        assert {x.email for x in list_subscribers(s, SubscriberFilter(q="bob@example.NET")).rows} == {"bob@example.net"}


def test_date_range_pages_in_time_order_with_a_cursor(history) -> None:
    """A range over days 1-3, two rows a page: every message of the range once, newest first, nothing else."""
    with history.sessions() as s:
        every = s.scalars(select(Message)).all()
        want = sorted((m for m in every if T0 + timedelta(days=1) <= m.created_at < T0 + timedelta(days=4)),
                      key=lambda m: (m.created_at, m.id), reverse=True)
        assert len(want) >= 3
        flt = MessageFilter.from_args({"since": "2026-03-03", "until": "2026-03-05", "limit": "2"})
        got, before = [], None
        while True:
            page = list_messages(s, MessageFilter(**{**vars(flt), "before": before}))
            got += page.rows
            if page.next_before is None:
                break
            before = page.next_before
        assert [m.id for m in got] == [m.id for m in want]


def test_csv_export_streams_every_row_in_pages(history, tmp_path, monkeypatch) -> None:
    with history.sessions() as s:
        ids = sorted(s.scalars(select(Message.id)), reverse=True)
    pages = list(export_pages(history.sessions, MessageFilter(), page=2))
    assert [len(p) for p in pages[:-1]] == [2] * (len(pages) - 1)
    assert [int(r[0]) for p in pages for r in p] == ids
    step = history.campaigns["back-pain-bundle"].steps[0].key
    only = [r for p in export_pages(history.sessions, MessageFilter(campaign="back-pain-bundle", step=step), page=2)
            for r in p]
    assert {r[5] for r in only} == {step} and len(only) == len(READERS)
    monkeypatch.chdir(tmp_path)
    env = {"DATABASE_URL": history.settings.database_url, "DRIP_SECRET_KEY": history.settings.secret_key,
           "DRIP_EMAIL_URL": history.settings.email_url}
    result = CliRunner().invoke(main, ["log", "--csv", str(tmp_path / "log.csv"), "--email", "ann"], env=env)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO((tmp_path / "log.csv").read_text(encoding="utf-8"))))
    assert rows[0][:4] == ["id", "created_at", "sent_at", "to"]
    assert {r[3] for r in rows[1:]} == {"ann@example.org", "Anna.B@example.org"}
    assert f"exported {len(rows) - 1} messages" in result.output


def _plans(runtime, action) -> list[tuple[str, str]]:
    """(statement, plan) for every SELECT `action` runs, planned with EXPLAIN by the same database.
    PostgreSQL plans with sequential scans priced out (a tiny table would rightly be scanned), so a plan
    that still scans has no index to use."""
    engine = runtime.sessions.kw["bind"]
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
        pg = engine.dialect.name == "postgresql"
        if pg:
            conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in seen:
            prefix = "EXPLAIN " if pg else "EXPLAIN QUERY PLAN "
            rows = conn.exec_driver_sql(prefix + statement, parameters).all()
            out.append((statement, "\n".join(str(r[-1]) for r in rows)))
        conn.rollback()
    return out


SCANS = ("Seq Scan on messages", "Seq Scan on subscribers", "SCAN messages", "SCAN subscribers")


@pytest.mark.parametrize("view", ["address", "date range", "campaign step", "step export", "subscriber search"])
def test_console_queries_use_an_index(history, view) -> None:
    step = history.campaigns["back-pain-bundle"].steps[0].key

    def run() -> None:
        with history.sessions() as s:
            if view == "address":
                list_messages(s, MessageFilter(email="ann@example.org"))
            elif view == "date range":
                page = list_messages(s, MessageFilter.from_args({"since": "2026-03-03", "until": "2026-03-04",
                                                                 "limit": "1"}))
                list_messages(s, MessageFilter.from_args({"since": "2026-03-03", "before": str(page.next_before)}))
            elif view == "campaign step":
                list_messages(s, MessageFilter(campaign="back-pain-bundle", step=step))
            elif view == "step export":
                list(export_pages(history.sessions, MessageFilter(campaign="back-pain-bundle", step=step), page=2))
            else:
                list_subscribers(s, SubscriberFilter(q="ann@"))
    plans = _plans(history, run)
    assert plans
    for statement, plan in plans:
        assert not any(scan in plan for scan in SCANS), f"{view}: a full scan\n{statement}\n{plan}"
    # The index meant for the view: not a walk of every message in id order that filters as it goes.
    assert any(INDEX[view] in plan for _s, plan in plans), f"{view}: {INDEX[view]} unused\n{plans}"


INDEX = {"address": "ix_messages_subscriber_id", "date range": "ix_messages_created",
         "campaign step": "ix_messages_campaign_step", "step export": "ix_messages_campaign_step",
         "subscriber search": "email_key"}


def test_cli_csv_export_equals_the_web_export(history, client, tmp_path, monkeypatch) -> None:
    """`drip log --csv` (PostgreSQL: COPY, no Python per row) writes the rows the admin's CSV download
    writes, field for field: ISO times, the formula guard on a subject starting with "=", empty fields."""
    with history.sessions() as s, s.begin():
        first = s.scalars(select(Message).order_by(Message.id)).first()
        first.subject, first.last_error = "=HYPERLINK(\"x\")", "line one\nline two, with a comma"
        first.sent_at = first.sent_at + timedelta(microseconds=123456)
        s.scalars(select(Message).order_by(Message.id.desc())).first().subject = ""
    from service.core.db import utcnow
    from service.operator.accounts import add_user
    with history.sessions() as s, s.begin():
        add_user(s, "ops@example.org", "a long enough password", now=utcnow())
    import re
    page = client.get("/admin/login").data.decode()
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    client.post("/admin/login", data={"email": "ops@example.org", "password": "a long enough password", "csrf": token})
    for args, query in (([], ""), (["--since", "2026-03-03"], "?since=2026-03-03")):
        web = list(csv.reader(io.StringIO(client.get("/admin/messages.csv" + query).get_data(as_text=True))))
        monkeypatch.chdir(tmp_path)
        env = {"DATABASE_URL": history.settings.database_url, "DRIP_SECRET_KEY": history.settings.secret_key,
               "DRIP_EMAIL_URL": history.settings.email_url}
        result = CliRunner().invoke(main, ["log", "--csv", str(tmp_path / "all.csv"), *args], env=env)
        assert result.exit_code == 0, result.output
        cli = list(csv.reader(io.StringIO((tmp_path / "all.csv").read_text(encoding="utf-8"))))
        assert cli == web and len(cli) > 3
        if not args:
            assert ["'=HYPERLINK(\"x\")", "line one\nline two, with a comma"] in [row[8:10] for row in cli]
            assert any(row[2].endswith(".123456+00:00") for row in cli) and cli[1][8] == ""


HOME_SCANS = SCANS + ("Seq Scan on events", "Seq Scan on enrollments", "SCAN events", "SCAN enrollments")
# "joined from" has no required index here: on five readers the planner rightly starts from the campaign's
# messages; on a large list it starts from ix_enrollments_continued (bench/console_scale.py --explain).
HOME_INDEX = {"unsubscribes": "ix_events_unsubscribed"}


@pytest.mark.parametrize("view", ["unsubscribes", "joined from"])
def test_home_page_queries_use_an_index(history, view) -> None:
    """The home page's week of unsubscribes and "joined from another lead magnet": the few rows each needs,
    through its partial index, never every event of the week or every enrollment of a campaign."""
    from service.core.db import utcnow
    from service.operator import home

    def run() -> None:
        with history.sessions() as s:
            if view == "unsubscribes":
                home.unsubscribes(s, now=utcnow())
            else:
                home.joined_from(s, "back-pain-bundle")
    plans = _plans(history, run)
    assert plans
    for statement, plan in plans:
        assert not any(scan in plan for scan in HOME_SCANS), f"{view}: a full scan\n{statement}\n{plan}"
    if view in HOME_INDEX:
        assert any(HOME_INDEX[view] in plan for _s, plan in plans), f"{view}: {HOME_INDEX[view]} unused\n{plans}"
