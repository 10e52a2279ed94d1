"""The stored forecast: on a large list the worker replays every reader's schedule in the background and stores
counts per quarter hour, and the home page and `drip forecast` read those. What they show is the replay's own
answer, per day in any operator's zone (half and three-quarter hour offsets included), minus the quarter hours
already over; it is computed again when it gets old or a campaign is paused; and the page says as of when.
"INLINE_LIMIT" is lowered here so a handful of readers counts as a large list."""
from __future__ import annotations

import json
import re
from collections import Counter
from datetime import timedelta

import pytest
from click.testing import CliRunner
from test_admin_api import PASSWORD, login, operator  # noqa: F401  (operator is a fixture)
from test_forecast import NOW, TOKYO_JOINED, a_week_of_readers, join
from test_forecast import rt as rt  # a fixture: the shipped campaigns plus a copy, a daily cap of 1

from service.cli import main
from service.core.db import utcnow
from service.core.models import ForecastCount, ForecastRun
from service.operator import forecast as forecasting
from service.operator.campaign_stats import set_paused
from service.scheduler import refresh_forecast

ZONES = ("Europe/Paris", "Asia/Kathmandu", "America/St_Johns", "Pacific/Chatham", "America/Los_Angeles")


def table(days) -> list[tuple]:
    return [(day, r.campaign, r.step_key, r.subject, r.count) for day, rows in days for r in rows] + \
        [(day,) for day, _rows in days]


def test_the_stored_forecast_is_the_replay_in_every_zone(rt, smtp) -> None:
    a_week_of_readers(rt)
    d = rt.dispatcher()
    stored = forecasting.refresh(d, rt.sessions, now=NOW, force=True)
    assert len(stored.emails) >= 5
    with rt.sessions() as s:
        assert s.query(ForecastCount).count() > 0 and s.get(ForecastRun, 1).computed_at == NOW
        for tz in ZONES:
            end = forecasting.horizon(NOW, tz)
            exact = forecasting.forecast(d, s, now=NOW, end=end)
            read = forecasting.stored(d, s, now=NOW, end=end)
            assert read.computed_at == NOW and read.total == exact.total
            assert table(read.by_day(tz, rt.campaigns)) == table(exact.by_day(tz, rt.campaigns)), tz
            assert (read.held_by_cap, read.snoozed_readers) == (1, 1)
            assert read.paused_campaigns == ["monthly-newsletter"]


def test_a_later_look_leaves_out_what_is_over(rt, smtp) -> None:
    a_week_of_readers(rt)
    d = rt.dispatcher()
    emails = forecasting.refresh(d, rt.sessions, now=NOW, force=True).emails
    later = NOW + timedelta(days=2, hours=1, minutes=20)  # the email at 13:00 that day is gone
    end = forecasting.horizon(later, "Europe/Paris")
    expected = Counter((p.campaign, p.step_key) for p in emails
                       if forecasting.slot_of(later) <= forecasting.slot_of(p.at) and p.at < end)
    with rt.sessions() as s:
        read = forecasting.stored(d, s, now=later, end=end)
        shown = Counter()
        for (_at, c, k), n in read.slots.items():
            shown[(c, k)] += n
        assert shown == expected and sum(expected.values()) >= 2
        assert read.total < len(emails)  # the first two days' emails are gone from it
        # Reaching further than it was computed for: no answer rather than a short one.
        assert forecasting.stored(d, s, now=later, end=NOW + timedelta(days=9)) is None


def test_computed_again_when_old_or_a_campaign_is_paused(rt, smtp) -> None:
    a_week_of_readers(rt)
    d = rt.dispatcher()
    with rt.sessions() as s:
        assert forecasting.stale(s, now=NOW)  # nothing stored yet
    forecasting.refresh(d, rt.sessions, now=NOW)
    assert forecasting.refresh(d, rt.sessions, now=NOW + timedelta(minutes=5)) is None  # still fresh
    with rt.sessions() as s:
        assert not forecasting.stale(s, now=NOW + timedelta(minutes=14))
        assert forecasting.stale(s, now=NOW + forecasting.REFRESH_EVERY)
        before = forecasting.stored(d, s, now=NOW, end=forecasting.horizon(NOW, "UTC"))
    assert {c for (_at, c, _k) in before.slots} == {"back-pain-bundle", "bundle-copy"}
    with rt.sessions() as s, s.begin():
        set_paused(s, "bundle-copy", True, now=NOW + timedelta(minutes=1))
    with rt.sessions() as s:
        assert forecasting.stale(s, now=NOW + timedelta(minutes=2))
        # Until it is computed again, the paused campaign's emails are left out of what is shown.
        shown = forecasting.stored(d, s, now=NOW, end=forecasting.horizon(NOW, "UTC"))
    assert {c for (_at, c, _k) in shown.slots} == {"back-pain-bundle"}
    again = forecasting.refresh(d, rt.sessions, now=NOW + timedelta(minutes=2))
    assert again is not None and {p.campaign for p in again.emails} == {"back-pain-bundle"}
    # A replay that took 200 s (a very large list) is not repeated for ten times that: 2,000 s.
    with rt.sessions() as s, s.begin():
        forecasting.store(s, again, computed_at=NOW + timedelta(minutes=2), seconds=200.0)
    with rt.sessions() as s:
        assert not forecasting.stale(s, now=NOW + timedelta(minutes=2, seconds=1999))
        assert forecasting.stale(s, now=NOW + timedelta(minutes=2, seconds=2000))


@pytest.fixture
def large(monkeypatch):
    """Any list with an email waiting counts as large."""
    monkeypatch.setattr(forecasting, "INLINE_LIMIT", 0)


def forecast_total(html: str) -> int:
    found = re.search(r'<tfoot><tr><th scope="row">Total</th><td></td><td class="num">(\d+)</td>', html)
    return int(found.group(1))


def test_the_home_page_reads_what_the_worker_stored(client, runtime, operator, smtp, large) -> None:  # noqa: F811
    now = utcnow()
    join(runtime, "paris@example.org", "back-pain-bundle", "Europe/Paris", now - timedelta(days=3))
    join(runtime, "tokyo@example.org", "back-pain-bundle", "Asia/Tokyo", now - TOKYO_JOINED)
    join(runtime, "news@example.org", "monthly-newsletter", "America/New_York", now - timedelta(days=27))
    login(client, operator, PASSWORD)
    page = client.get("/admin/").get_data(as_text=True)
    assert "computed by the worker in the background" in page and forecast_total(page) == 0
    refresh_forecast(runtime.dispatcher())  # the worker's job
    page = client.get("/admin/").get_data(as_text=True)
    with runtime.sessions() as s:
        exact = forecasting.forecast(runtime.dispatcher(), s, now=utcnow(),
                                     end=forecasting.horizon(utcnow(), "UTC"))
    assert "As of " in page and forecast_total(page) == exact.total == 3
    assert "week-01" in page and "month-01" in page
    # A new reader: the page shows the stored figure (as of when it says) until the worker's next run.
    join(runtime, "new@example.org", "back-pain-bundle", "Europe/Paris", utcnow() - timedelta(days=2))
    assert forecast_total(client.get("/admin/").get_data(as_text=True)) == 3
    refresh_forecast(runtime.dispatcher())  # fresh: nothing to do
    assert forecast_total(client.get("/admin/").get_data(as_text=True)) == 3
    forecasting.refresh(runtime.dispatcher(), runtime.sessions, now=utcnow(), force=True)
    assert forecast_total(client.get("/admin/").get_data(as_text=True)) == 4


def test_drip_forecast_on_a_large_list(runtime, smtp, tmp_path, monkeypatch, large) -> None:
    """With nothing stored it replays and stores (the home page then has it); then it reads the stored one and
    says as of when; --fresh replays again."""
    monkeypatch.chdir(tmp_path)
    now = utcnow()
    join(runtime, "soon@example.org", "back-pain-bundle", "Europe/Paris", now - timedelta(days=3))
    join(runtime, "later@example.org", "back-pain-bundle", "Asia/Tokyo", now - TOKYO_JOINED)
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key}
    r = CliRunner().invoke(main, ["forecast", "--json", "--tz", "Asia/Kathmandu"], env=env)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert sum(row["emails"] for row in rows) == 2 and {row["step"] for row in rows} == {"week-01"}
    with runtime.sessions() as s:
        assert s.get(ForecastRun, 1) is not None  # stored for the console
    join(runtime, "third@example.org", "back-pain-bundle", "Europe/Paris", utcnow() - timedelta(days=2))
    r = CliRunner().invoke(main, ["forecast", "--tz", "Europe/Paris"], env=env)
    assert r.exit_code == 0 and r.output.startswith("as of ") and "--fresh" in r.output
    assert sum(int(m) for m in re.findall(r"^\s+(\d+)\s", r.output, re.M)) == 2  # the stored figure
    r = CliRunner().invoke(main, ["forecast", "--fresh", "--tz", "Europe/Paris"], env=env)
    assert r.exit_code == 0 and not r.output.startswith("as of ")
    assert sum(int(m) for m in re.findall(r"^\s+(\d+)\s", r.output, re.M)) == 3


def test_joined_from_counts_the_readers_a_lead_magnet_brought(rt, smtp) -> None:
    """The home page's "joined from": after a week of passes, the Tokyo reader (plateau-14, continued into the
    bundle at week-01) is counted at week-01 under plateau-14; the bundle's own readers are not."""
    from service.operator import home

    a_week_of_readers(rt)
    d = rt.dispatcher()
    hour = NOW
    while hour < NOW + timedelta(days=7):
        d.run_pass(hour)
        hour += timedelta(hours=6)
    with rt.sessions() as s:
        assert home.joined_from(s, "back-pain-bundle") == {"week-01": {"plateau-14": 1}}
        assert home.joined_from(s, "plateau-14") == {} and home.joined_from(s, "bundle-copy") == {}


def test_the_worker_scheduler_stores_the_forecast(runtime, smtp) -> None:
    """`drip serve`'s and `drip worker`'s scheduler has the forecast job beside the passes; run, it stores
    the forecast of the readers waiting."""
    from datetime import UTC, datetime

    from test_wake import wait_until

    from service.scheduler import FORECAST_JOB_ID, start_background

    now = utcnow()
    join(runtime, "paris@example.org", "back-pain-bundle", "Europe/Paris", now - timedelta(days=3))
    join(runtime, "tokyo@example.org", "back-pain-bundle", "Asia/Tokyo", now - TOKYO_JOINED)
    scheduler, _wake = start_background(runtime.dispatcher(), 120.0)
    try:
        scheduler.modify_job(FORECAST_JOB_ID, next_run_time=datetime.now(UTC))

        def stored_total() -> int | None:
            with runtime.sessions() as s:
                found = forecasting.stored(runtime.dispatcher(), s, now=utcnow(),
                                           end=forecasting.horizon(utcnow(), "UTC"))
                return None if found is None else found.total
        assert wait_until(lambda: stored_total() is not None)
        assert stored_total() == 2
    finally:
        scheduler.shutdown(wait=True)
