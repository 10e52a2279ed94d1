"""Campaign files and schedule arithmetic: delays, send hours across daylight saving, loading errors."""
from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import ROOT

from service.campaigns.loader import load_campaigns
from service.campaigns.model import CampaignError, Delay
from service.campaigns.schedule import due_at
from service.compose.composer import ComposeJob, Composer

TEMPLATES = ROOT / "email_templates"


@pytest.mark.parametrize("text,expected", [
    ("0", Delay()), ("7d", Delay(days=7)), ("1w", Delay(days=7)), ("3", Delay(days=3)),
    ("12h", Delay(seconds=43200)), ("30m", Delay(seconds=1800)), (" 2d ", Delay(days=2)),
])
def test_delay_parsing(text: str, expected: Delay) -> None:
    """Delays are written as plain numbers of days or with w/d/h/m units."""
    assert Delay.parse(text) == expected


@pytest.mark.parametrize("bad", ["", "7 days", "-1d", "1.5d", "d", "7y"])
def test_bad_delays_are_refused(bad: str) -> None:
    """Anything else is an error that names the bad value."""
    with pytest.raises(ValueError, match="bad delay"):
        Delay.parse(bad)


@pytest.mark.parametrize("zone,start", [
    ("Europe/Paris", datetime(2026, 3, 23, 8, 5, tzinfo=UTC)),      # spring forward on 2026-03-29
    ("Europe/Paris", datetime(2026, 10, 19, 7, 5, tzinfo=UTC)),     # fall back on 2026-10-25
    ("America/New_York", datetime(2026, 3, 2, 14, 0, tzinfo=UTC)),  # spring forward on 2026-03-08
    ("America/New_York", datetime(2026, 10, 26, 13, 0, tzinfo=UTC)),
    ("Australia/Lord_Howe", datetime(2026, 3, 30, 0, 0, tzinfo=UTC)),  # a 30-minute DST shift
])
def test_weekly_steps_keep_weekday_and_hour_across_dst(zone: str, start: datetime) -> None:
    """Twelve weekly steps in a row land on the same weekday at 09:00 local: none skipped, none doubled."""
    tz = ZoneInfo(zone)
    sent = start
    first_day = sent.astimezone(tz).date()
    for week in range(1, 13):
        due = due_at(delay=Delay(days=7), after=sent, tz_name=zone, send_hour=9)
        local = due.astimezone(tz)
        assert (local.hour, local.minute) == (9, 0)
        assert local.date() == first_day + timedelta(days=7 * week)
        assert due.tzinfo is not None and due.utcoffset() == timedelta(0)
        sent = due + timedelta(seconds=3)  # the pass sends a few seconds after it is due


def test_immediate_and_hour_delays_do_not_snap_to_the_send_hour() -> None:
    """A zero delay is due at once; hour delays are exact durations."""
    t = datetime(2026, 6, 1, 22, 30, tzinfo=UTC)
    assert due_at(delay=Delay(), after=t, tz_name="Europe/Paris", send_hour=9) == t
    assert due_at(delay=Delay(seconds=7200), after=t, tz_name="Europe/Paris", send_hour=9) == t + timedelta(hours=2)


def test_send_hour_in_a_dst_gap_still_exists() -> None:
    """A send hour that does not exist on a spring-forward day maps to a real instant after it."""
    due = due_at(delay=Delay(days=1), after=datetime(2026, 3, 28, 12, tzinfo=UTC), tz_name="Europe/Paris",
                 send_hour=2)
    assert due.astimezone(ZoneInfo("Europe/Paris")).hour == 3


def test_shipped_campaign_renders_every_step() -> None:
    """Every step of every shipped campaign renders in text and HTML with sample data, links and footer."""
    campaigns = load_campaigns(TEMPLATES)
    bundle = campaigns["back-pain-bundle"]
    assert len(bundle.steps) >= 9 and bundle.steps[0].key == "welcome" and bundle.steps[0].delay.immediate
    assert all(s.delay == Delay(days=7) for s in bundle.steps[1:])
    assert {"psoas_release", "tfl_release", "glute_guide"} <= set(bundle.resources)
    composer = Composer(templates_dir=TEMPLATES, base_url="https://drip.example.org", postal_address="1 Main St")
    for campaign in campaigns.values():
        for step in campaign.steps:
            for name in ("Ada", ""):
                job = ComposeJob(message_pk=1, message_id="<x@example.org>", campaign=campaign, step=step,
                                 to_email="ada@example.org", name=name, unsubscribe_url="https://u.example/unsub",
                                 now=datetime(2026, 1, 1, tzinfo=UTC))
                subject, text, html = composer.render(job)
                assert subject and subject.upper() != subject
                assert "https://u.example/unsub" in text and "https://u.example/unsub" in html
                assert "1 Main St" in text and "1 Main St" in html
                assert ("Hi Ada," if name else "Hi there,") in text
    welcome = ComposeJob(1, "<x@e.org>", bundle, bundle.steps[0], "a@e.org", "", "u", datetime.now(UTC))
    welcome_text = composer.render(welcome)[1]
    for key in ("psoas_release", "tfl_release", "glute_guide"):
        assert bundle.resources[key] in welcome_text


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / "templates"
    shutil.copytree(TEMPLATES, dest)
    return dest


@pytest.mark.parametrize("change,message", [
    (lambda t: t.replace('template = "week-01"', 'template = "week-99"'), "missing template"),
    (lambda t: t.replace('key = "week-02"', 'key = "week-01"'), "duplicate step key 'week-01'"),
    (lambda t: t.replace('delay = "7d"', 'delay = "seven days"', 1), "bad delay"),
    (lambda t: t.replace('timezone = "America/New_York"', 'timezone = "Mars/Base"'), "IANA"),
    (lambda t: t.replace("from = ", "from_ = "), "'from'"),
    # From addresses: a plain one is checked by the loader's own pattern, anything else by email_validator
    (lambda t: re.sub(r'^from = .*$', 'from = "Coach <coach@>"', t, flags=re.M), "is not a valid address"),
    (lambda t: re.sub(r'^from = .*$', 'from = "Coach <coach@mail.localhost>"', t, flags=re.M),
     "is not a valid address"),
    (lambda t: re.sub(r'^from = .*$', 'from = "Coach <co..ach@example.org>"', t, flags=re.M),
     "is not a valid address"),
    (lambda t: t + "\n[[steps]\n", "campaign.toml"),
])
def test_invalid_campaign_files_are_refused_naming_the_problem(tmp_path: Path, change, message: str) -> None:
    """A broken campaign file stops loading with an error naming the file and what is wrong."""
    root = _copy(tmp_path)
    path = root / "back-pain-bundle" / "campaign.toml"
    path.write_text(change(path.read_text()))
    with pytest.raises(CampaignError) as err:
        load_campaigns(root)
    assert message in str(err.value) and "back-pain-bundle" in str(err.value)
