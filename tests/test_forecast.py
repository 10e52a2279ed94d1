"""The home page's "what goes out in the next 7 days" is what the dispatcher then sends: readers in four time
zones, a lead magnet continuing into its sequence, a snoozed reader, a reader in a paused campaign and a
reader over the daily cap; the forecast is taken, then a pass runs every hour for the week, and the emails
sent are exactly the ones forecast (reader, campaign, step and hour)."""
from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import ROOT, at, with_settings
from sqlalchemy import select, update

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.core.models import Enrollment, Message, Subscriber
from service.dispatch.sending_pause import pause
from service.operator.campaign_stats import set_paused
from service.operator.forecast import forecast, horizon

NOW = at("2026-03-10T12:00:00")  # a Tuesday; New York is on summer time since the 8th, Europe not yet


def templates(tmp_path: Path) -> Path:
    """The shipped campaigns plus a copy of the weekly bundle, so one reader can have two weekly emails due
    on the same day (the daily cap's case)."""
    root = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", root)
    shutil.copytree(root / "back-pain-bundle", root / "bundle-copy")
    return root


@pytest.fixture
def rt(runtime, tmp_path):
    built = with_settings(runtime, templates_dir=templates(tmp_path), max_emails_per_day=1)
    yield built
    built.sessions.kw["bind"].dispose()


# Tests on the real clock: how long ago a Tokyo reader joined, so their week-01 (the local day of joining
# plus seven, at 09:00 Tokyo = 00:00 UTC) falls inside a seven-day horizon at any hour of the day. A day
# ago was enough until 15:00 UTC; from then on Tokyo's date is a day ahead, the email lands at the
# horizon's end, and those tests failed every afternoon.
TOKYO_JOINED = timedelta(days=2)


def join(rt, email: str, campaign: str, tz: str, when) -> None:
    data = parse_signup({"email": email, "campaign": campaign, "timezone": tz}, campaigns=rt.campaigns,
                        default_campaign="back-pain-bundle")
    with rt.sessions() as s, s.begin():
        signup(s, data, campaign=rt.campaigns[campaign], meta=ConsentMeta("json"), now=when)
    rt.dispatcher().run_pass(when)  # the welcome goes at once


def subscriber_id(rt, email: str) -> int:
    with rt.sessions() as s:
        return s.scalar(select(Subscriber.id).where(Subscriber.email == email))


def a_week_of_readers(rt) -> dict[str, int]:
    join(rt, "ny@example.org", "back-pain-bundle", "America/New_York", NOW - timedelta(days=5))
    join(rt, "tokyo@example.org", "plateau-14", "Asia/Tokyo", NOW - timedelta(days=3))  # continues at week-01
    join(rt, "auckland@example.org", "back-pain-bundle", "Pacific/Auckland", NOW - timedelta(days=2))
    join(rt, "snoozed@example.org", "back-pain-bundle", "Europe/Paris", NOW - timedelta(days=6))
    join(rt, "paused@example.org", "monthly-newsletter", "Europe/Paris", NOW - timedelta(days=29))
    join(rt, "capped@example.org", "back-pain-bundle", "America/New_York", NOW - timedelta(days=5))
    join(rt, "capped@example.org", "bundle-copy", "America/New_York", NOW - timedelta(days=5))
    ids = {e.split("@")[0]: subscriber_id(rt, e) for e in ("ny@example.org", "tokyo@example.org",
                                                            "auckland@example.org", "snoozed@example.org",
                                                            "paused@example.org", "capped@example.org")}
    with rt.sessions() as s, s.begin():
        # Snoozed two weeks ago; the snooze ends in three days and five hours, after week-01 fell due.
        s.execute(update(Subscriber).where(Subscriber.id == ids["snoozed"])
                  .values(snoozed_until=NOW + timedelta(days=3, hours=5)))
        set_paused(s, "monthly-newsletter", True, now=NOW - timedelta(hours=1))  # month-01 falls due tomorrow
    return ids


def sent_since(rt, since) -> set[tuple]:
    with rt.sessions() as s:
        rows = s.execute(select(Message.subscriber_id, Message.campaign, Message.step_key, Message.sent_at)
                         .where(Message.sent_at >= since)).all()
    return {(sid, c, k, t) for sid, c, k, t in rows}


def test_the_forecast_is_what_the_next_passes_send(rt, smtp) -> None:
    ids = a_week_of_readers(rt)
    end = horizon(NOW, "UTC", days=7)
    with rt.sessions() as s:
        predicted = forecast(rt.dispatcher(), s, now=NOW, end=end)
    d = rt.dispatcher()
    hour = NOW
    while hour < end:
        d.run_pass(hour)
        hour += timedelta(hours=1)
    sent = sent_since(rt, NOW)
    assert {(p.subscriber_id, p.campaign, p.step_key, p.at) for p in predicted.emails} == sent
    # The states each show in what was sent (and so in what was forecast):
    by_reader = {sid: sorted((t, c, k) for sid2, c, k, t in sent if sid2 == sid) for sid in ids.values()}
    assert [(c, k) for _t, c, k in by_reader[ids["tokyo"]]] == [("back-pain-bundle", "week-01")]
    assert by_reader[ids["paused"]] == []  # month-01 was due, the campaign is paused
    assert predicted.paused_campaigns == ["monthly-newsletter"]
    snoozed = by_reader[ids["snoozed"]]
    assert [t for t, _c, _k in snoozed] == [NOW + timedelta(days=3, hours=5)]  # at the snooze's end, not before
    capped = by_reader[ids["capped"]]
    assert [k for _t, _c, k in capped] == ["week-01", "week-01"]
    assert capped[1][0] - capped[0][0] == timedelta(days=1)  # the second waited a day for the cap
    assert predicted.held_by_cap == 1 and predicted.snoozed_readers == 1
    auckland = by_reader[ids["auckland"]]
    assert auckland and auckland[0][0].astimezone(__import__("zoneinfo").ZoneInfo("Pacific/Auckland")).hour == 9


def test_grouped_by_the_operators_day_and_step(rt, smtp) -> None:
    """Per day in the operator's zone: every day of the week is listed, each step with its subject and count."""
    a_week_of_readers(rt)
    end = horizon(NOW, "Europe/Paris", days=7)
    with rt.sessions() as s:
        days = forecast(rt.dispatcher(), s, now=NOW, end=end).by_day("Europe/Paris", rt.campaigns)
    assert len(days) == 7 and days[0][0].isoformat() == "2026-03-10"
    rows = [r for _day, day_rows in days for r in day_rows]
    week01 = rt.campaigns["back-pain-bundle"].step_by_key("week-01").subject
    assert sum(r.count for r in rows if r.campaign == "back-pain-bundle" and r.step_key == "week-01") == 5
    assert all(r.subject == week01 for r in rows if r.step_key == "week-01" and r.campaign == "back-pain-bundle")


def test_nothing_goes_out_while_sending_is_paused(rt, smtp) -> None:
    a_week_of_readers(rt)
    with rt.sessions() as s, s.begin():
        pause(s, "the relay refused our password (535)", now=NOW)
    with rt.sessions() as s:
        predicted = forecast(rt.dispatcher(), s, now=NOW, end=horizon(NOW, "UTC"))
    assert predicted.emails == [] and "535" in predicted.sending_paused
    rt.dispatcher().run_pass(NOW + timedelta(days=2, hours=1))
    assert sent_since(rt, NOW) == set()
    with rt.sessions() as s:  # and the enrollment is still there, waiting
        assert s.scalar(select(Enrollment.id).where(Enrollment.next_due_at.is_not(None))) is not None


def test_drip_forecast_prints_the_same_answer(runtime, smtp, tmp_path, monkeypatch) -> None:
    """`drip forecast --json` gives the console's per-day, per-step answer; a made-up zone is refused by name."""
    from click.testing import CliRunner

    from service.cli import main
    from service.core.db import utcnow

    monkeypatch.chdir(tmp_path)
    now = utcnow()
    join(runtime, "soon@example.org", "back-pain-bundle", "Europe/Paris", now - timedelta(days=3))
    join(runtime, "later@example.org", "back-pain-bundle", "Asia/Tokyo", now - TOKYO_JOINED)
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key}
    r = CliRunner().invoke(main, ["forecast", "--json", "--tz", "Europe/Paris"], env=env)
    assert r.exit_code == 0, r.output
    import json

    rows = [json.loads(line) for line in r.output.splitlines()]
    with runtime.sessions() as s:
        expected = forecast(runtime.dispatcher(), s, now=now, end=horizon(now, "Europe/Paris"))
    assert sum(row["emails"] for row in rows) == len(expected.emails) == 2
    assert {row["step"] for row in rows} == {"week-01"}
    bad = CliRunner().invoke(main, ["forecast", "--tz", "Mars/Olympus"], env=env)
    assert bad.exit_code != 0 and "--tz" in bad.output
