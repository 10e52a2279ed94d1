"""Send windows (allowed weekdays and a send hour in the reader's zone), correct across DST."""
from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import ROOT, at, with_settings
from sqlalchemy import select

from service.app import create_app
from service.audience.signups import ConsentMeta, parse_signup, signup
from service.campaigns.loader import load_campaigns
from service.campaigns.model import CampaignError, Delay
from service.campaigns.schedule import due_at
from service.core.models import Enrollment, Message, Subscriber

MON, THU = 0, 3


def templates_with(tmp_path: Path, campaign: str, edit) -> Path:
    root = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", root)
    path = root / campaign / "campaign.toml"
    path.write_text(edit(path.read_text()))
    return root


def test_a_day_outside_the_window_moves_to_the_next_allowed_day() -> None:
    """A weekly step from a Thursday lands on the next Monday at the send hour when only Monday is allowed."""
    thursday = at("2026-03-05T15:00:00")
    due = due_at(delay=Delay(days=7), after=thursday, tz_name="Europe/Paris", send_hour=8,
                 send_days=frozenset({MON}))
    local = due.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.date(), local.hour) == (date(2026, 3, 16), 8)
    # An allowed day is kept as it is; hour delays ignore the window.
    assert due_at(delay=Delay(days=7), after=thursday, tz_name="Europe/Paris", send_hour=8,
                  send_days=frozenset({THU})).astimezone(ZoneInfo("Europe/Paris")).date() == date(2026, 3, 12)
    assert due_at(delay=Delay(seconds=3600), after=thursday, tz_name="Europe/Paris", send_hour=8,
                  send_days=frozenset({MON})) == thursday + timedelta(hours=1)


def test_send_days_and_hour_load_per_campaign_and_per_step(tmp_path: Path) -> None:
    """`send_days`/`send_hour` at the top apply to every step; a step's own override them for that step."""
    def edit(text: str) -> str:
        text = text.replace("send_hour = 9\n", 'send_hour = 9\nsend_days = ["mon", "wed"]\n', 1)
        return text.replace('key = "week-02"\n', 'key = "week-02"\nsend_days = ["sat"]\nsend_hour = 11\n')
    campaign = load_campaigns(templates_with(tmp_path, "back-pain-bundle", edit))["back-pain-bundle"]
    assert campaign.window(campaign.step_by_key("week-01")) == (9, frozenset({0, 2}))
    assert campaign.window(campaign.step_by_key("week-02")) == (11, frozenset({5}))


@pytest.mark.parametrize("days,message", [('[]', "non-empty list"), ('["someday"]', "unknown day 'someday'"),
                                          ('"mon"', "non-empty list")])
def test_bad_send_days_are_refused(tmp_path: Path, days: str, message: str) -> None:
    """An empty list or an unknown day name stops loading, naming the file."""
    root = templates_with(tmp_path, "back-pain-bundle",
                          lambda t: t.replace("send_hour = 9\n", f"send_hour = 9\nsend_days = {days}\n", 1))
    with pytest.raises(CampaignError) as err:
        load_campaigns(root)
    assert message in str(err.value) and "back-pain-bundle" in str(err.value)


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Paris"])
def test_monday_only_sequence_walks_across_dst_with_a_frozen_clock(runtime, smtp, tmp_path, zone):
    """A Thursday signup with Monday-only sending: every weekly email goes on consecutive Mondays at 08:00
    local, through the March DST change (US 8 March, EU 29 March): none skipped, none doubled."""
    root = templates_with(tmp_path, "back-pain-bundle", lambda t: t.replace(
        "send_hour = 9\n", 'send_hour = 8\nsend_days = ["mon"]\n', 1))
    rt = with_settings(runtime, templates_dir=root)
    data = parse_signup({"email": "w@example.org", "timezone": zone}, campaigns=rt.campaigns,
                        default_campaign="back-pain-bundle")
    start = at("2026-03-05T15:00:00")  # a Thursday
    with rt.sessions() as s, s.begin():
        signup(s, data, campaign=rt.campaigns["back-pain-bundle"], meta=ConsentMeta("json"), now=start)
    d = rt.dispatcher()
    assert d.run_pass(start).sent == 1  # the welcome goes at once: windows apply to day-based delays only
    tz = ZoneInfo(zone)
    weeks = len(rt.campaigns["back-pain-bundle"].steps) - 1
    for _week in range(weeks):
        with rt.sessions() as s:
            due = s.scalars(select(Enrollment.next_due_at)).one()
        assert d.run_pass(due - timedelta(minutes=1)).sent == 0  # frozen just before: nothing yet
        assert d.run_pass(due + timedelta(seconds=20)).sent == 1
    with rt.sessions() as s:
        sent = [m.sent_at.astimezone(tz) for m in s.scalars(select(Message).order_by(Message.id))][1:]
    assert [(t.date(), t.hour) for t in sent] == [
        (date(2026, 3, 16) + timedelta(weeks=n), 8) for n in range(weeks)]
    rt.sessions.kw["bind"].dispose()


def test_a_time_zone_change_reschedules_by_the_same_rule_the_dispatcher_uses(client, runtime, tmp_path) -> None:
    """Week 1 may only go on Saturdays at 11:00. Two readers in New York get the welcome; one moves to
    Tokyo on the preference page. Her week 1 is then due on a Saturday at 11:00 Tokyo time, exactly what
    the dispatcher computes for a reader who signed up in Tokyo; the other reader's due time is unchanged."""
    def edit(text: str) -> str:
        return text.replace('key = "week-01"\n', 'key = "week-01"\nsend_days = ["sat"]\nsend_hour = 11\n')
    rt = with_settings(runtime, templates_dir=templates_with(tmp_path, "back-pain-bundle", edit))
    t0 = at("2026-03-04T15:00:00")  # a Wednesday
    ids = {}
    for name, tz in (("ny", "America/New_York"), ("mover", "America/New_York"), ("tokyo", "Asia/Tokyo")):
        data = parse_signup({"email": f"{name}@example.org", "timezone": tz}, campaigns=rt.campaigns,
                            default_campaign="back-pain-bundle")
        with rt.sessions() as s, s.begin():
            ids[name] = signup(s, data, campaign=rt.campaigns["back-pain-bundle"], meta=ConsentMeta("json"),
                               now=t0).subscriber_id
    assert rt.dispatcher().run_pass(t0).sent == 3

    def due(name: str):
        with rt.sessions() as s:
            return s.scalars(select(Enrollment.next_due_at).where(Enrollment.subscriber_id == ids[name])).one()
    before = due("ny")
    app = create_app(runtime=rt)
    with rt.sessions() as s:
        public_id = s.get_one(Subscriber, ids["mover"]).public_id
    path = rt.reader_links(public_id, 0)["preferences_url"].removeprefix(rt.settings.base_url)
    r = app.test_client().post(f"{path}/profile", data={"name": "Mover", "timezone": "Asia/Tokyo"},
                               headers={"Origin": "https://drip.example.org"})
    assert r.status_code == 303
    local = due("mover").astimezone(ZoneInfo("Asia/Tokyo"))
    assert (local.weekday(), local.hour) == (5, 11)
    assert due("mover") == due("tokyo")
    assert due("ny") == before


def test_a_zone_change_before_the_welcome_leaves_it_due_at_once(client, runtime, tmp_path) -> None:
    """A signup's first step is due at once, whatever delay the file gives it; changing time zone before the
    pass that sends it does not push it a delay into the future (it is not counted from a schedule)."""
    def edit(text: str) -> str:
        return text.replace('key = "welcome"\ndelay = "0"', 'key = "welcome"\ndelay = "7d"')
    rt = with_settings(runtime, templates_dir=templates_with(tmp_path, "back-pain-bundle", edit))
    assert rt.campaigns["back-pain-bundle"].steps[0].delay.days == 7
    t0 = at("2026-03-04T15:00:00")
    data = parse_signup({"email": "early@example.org", "timezone": "America/New_York"}, campaigns=rt.campaigns,
                        default_campaign="back-pain-bundle")
    with rt.sessions() as s, s.begin():
        sid = signup(s, data, campaign=rt.campaigns["back-pain-bundle"], meta=ConsentMeta("json"), now=t0).subscriber_id
    with rt.sessions() as s:
        before = s.scalars(select(Enrollment.next_due_at).where(Enrollment.subscriber_id == sid)).one()
        public_id = s.get_one(Subscriber, sid).public_id
    path = rt.reader_links(public_id, 0)["preferences_url"].removeprefix(rt.settings.base_url)
    r = create_app(runtime=rt).test_client().post(f"{path}/profile", data={"name": "E", "timezone": "Asia/Tokyo"},
                                                  headers={"Origin": "https://drip.example.org"})
    assert r.status_code == 303
    with rt.sessions() as s:
        assert s.scalars(select(Enrollment.next_due_at).where(Enrollment.subscriber_id == sid)).one() == before
