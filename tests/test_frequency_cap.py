"""A reader in three campaigns gets at most one Drip email per local day; the rest wait, in order."""
from __future__ import annotations

import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import ROOT, at, with_settings
from sqlalchemy import select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.core.config import ConfigError, Settings
from service.core.models import Event, Message

T0 = at("2026-03-02T15:00:00")  # a Monday, 10:00 in New York
NY = ZoneInfo("America/New_York")
CAMPAIGNS = ("back-pain-bundle", "bundle-copy", "monthly-newsletter")


def three_weekly_campaigns(tmp_path: Path) -> Path:
    """The bundle, a copy of it, and the newsletter made weekly: three sequences due on the same days."""
    root = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", root)
    shutil.copytree(root / "back-pain-bundle", root / "bundle-copy")
    news = root / "monthly-newsletter" / "campaign.toml"
    news.write_text(news.read_text().replace('delay = "30d"', 'delay = "7d"'))
    return root


def join(rt, email: str, campaign: str) -> None:
    data = parse_signup({"email": email, "campaign": campaign, "timezone": "America/New_York"},
                        campaigns=rt.campaigns, default_campaign="back-pain-bundle")
    with rt.sessions() as s, s.begin():
        signup(s, data, campaign=rt.campaigns[campaign], meta=ConsentMeta("json"), now=T0)


@pytest.fixture
def capped(runtime, tmp_path):
    rt = with_settings(runtime, templates_dir=three_weekly_campaigns(tmp_path), max_emails_per_day=1)
    yield rt
    rt.sessions.kw["bind"].dispose()


def test_three_overlapping_campaigns_send_one_email_a_day_in_order(capped, smtp):
    """Three welcomes go at once (exempt); after that no local day carries two emails, held ones go on
    the next days in the order they were queued, and every step still reaches the reader exactly once."""
    for campaign in CAMPAIGNS:
        join(capped, "three@example.org", campaign)
    join(capped, "one@example.org", "back-pain-bundle")  # another reader is not held back by the first
    d = capped.dispatcher()
    assert d.run_pass(T0).sent == 4
    for hour in range(4, 24 * 100, 6):  # a pass every 6 hours (one at 13:00 UTC = 09:00 EDT), clock frozen
        d.run_pass(T0 + timedelta(hours=hour))
    with capped.sessions() as s:
        rows = s.scalars(select(Message).where(Message.to_email == "three@example.org")).all()
        held = s.scalars(select(Event).where(Event.type == "held")).all()
        other = s.scalars(select(Message).where(Message.to_email == "one@example.org")).all()
    assert all(r.status == "sent" for r in rows)
    expected = sum(len(capped.campaigns[c].steps) for c in CAMPAIGNS)
    assert len(rows) == expected == len({(r.campaign, r.step_key) for r in rows})
    per_day = Counter(r.sent_at.astimezone(NY).date() for r in rows if r.step_index != 0)
    assert max(per_day.values()) == 1
    assert held and {e.subscriber_id for e in held} == {rows[0].subscriber_id}
    # Day 7: three week-01 emails were queued together; they went on three days, in queue order.
    week01 = sorted((r for r in rows if r.step_key in ("week-01", "month-01")), key=lambda r: r.id)
    days = [r.sent_at.astimezone(NY).date() for r in week01]
    assert days == sorted(days) and len(set(days)) == 3
    assert days[0] == (T0 + timedelta(days=7)).astimezone(NY).date()
    assert all(r.sent_at.astimezone(NY).hour == 9 for r in week01[1:])  # held ones go at the send hour
    assert len(other) == len(capped.campaigns["back-pain-bundle"].steps)  # never held: one email a week


def test_a_cap_of_zero_turns_it_off(capped, smtp):
    """DRIP_MAX_EMAILS_PER_DAY=0: all three week-01 emails go on the day they are due."""
    d = capped.dispatcher(max_per_day=0)
    for campaign in CAMPAIGNS:
        join(capped, "z@example.org", campaign)
    d.run_pass(T0)
    assert d.run_pass(T0 + timedelta(days=7, hours=1)).sent == 3


def test_the_cap_is_read_from_the_environment() -> None:
    """DRIP_MAX_EMAILS_PER_DAY defaults to 1, takes a number, and a bad value names the variable."""
    base = {"DATABASE_URL": "sqlite:///x.db", "DRIP_SECRET_KEY": "k" * 32}
    assert Settings.from_env(base).max_emails_per_day == 1
    assert Settings.from_env({**base, "DRIP_MAX_EMAILS_PER_DAY": "3"}).max_emails_per_day == 3
    for bad in ("-1", "often"):
        with pytest.raises(ConfigError, match="DRIP_MAX_EMAILS_PER_DAY"):
            Settings.from_env({**base, "DRIP_MAX_EMAILS_PER_DAY": bad})
