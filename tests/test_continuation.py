"""A lead magnet whose form promised coaching continues into the shared weekly sequence, never sending a
coaching email twice; the download-only ones invite instead (tests/test_reader_trust.py)."""
from __future__ import annotations

import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import ROOT, at
from sqlalchemy import select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.campaigns.loader import load_campaigns
from service.campaigns.model import CampaignError
from service.core.models import Consent, Enrollment, Message

T0 = at("2026-03-02T15:00:00")  # a Monday, 10:00 in New York
BUNDLE = "back-pain-bundle"
PLATEAU = "plateau-14"  # the one lead magnet whose form promised coaching emails


def join(rt, email: str, campaign: str, now, tz: str | None = None) -> str:
    data = parse_signup({"email": email, "campaign": campaign, "timezone": tz}, campaigns=rt.campaigns,
                        default_campaign=BUNDLE)
    with rt.sessions() as s, s.begin():
        return signup(s, data, campaign=rt.campaigns[campaign], meta=ConsentMeta("form"), now=now).status


def walk(rt, start, days: int) -> None:
    """One pass a day at 19:00 UTC (afternoon in New York), the clock frozen at each pass."""
    d = rt.dispatcher()
    for n in range(days):
        d.run_pass(start + timedelta(days=n, hours=4))


def test_lead_magnet_continues_into_week_01_with_consent_and_its_own_why(runtime, smtp):
    """After the plateau guide's welcome (its form promised coaching emails), the reader is enrolled in the
    bundle at week-01, due 7 local days after the welcome at the send hour; consent says "continuation" and
    the footer names the plateau guide."""
    join(runtime, "g@example.org", PLATEAU, T0, tz="America/New_York")
    runtime.dispatcher().run_pass(T0)
    with runtime.sessions() as s:
        enrollments = {e.campaign: e for e in s.scalars(select(Enrollment))}
        consents = {c.campaign: c for c in s.scalars(select(Consent))}
    assert enrollments[PLATEAU].status == "completed"
    cont = enrollments[BUNDLE]
    week01 = runtime.campaigns[BUNDLE].step_by_key("week-01")
    assert (cont.status, cont.next_step, cont.origin_campaign) == ("active", week01.index, PLATEAU)
    local = cont.next_due_at.astimezone(ZoneInfo("America/New_York"))
    assert (local.date().isoformat(), local.hour) == ("2026-03-09", 9)  # across the 2026-03-08 DST change
    assert consents[BUNDLE].source == "continuation"
    assert "private coaching emails from me" in consents[BUNDLE].wording
    assert runtime.campaigns[PLATEAU].consent in consents[BUNDLE].wording
    walk(runtime, T0 + timedelta(days=1), 8)
    [_welcome, coaching] = smtp.handler.messages(to="g@example.org")
    assert coaching["Subject"] == week01.subject
    text = coaching.get_body(("plain",)).get_content()
    assert "free guide to breaking through plateaus" in " ".join(text.split())
    assert "weekly coaching emails at Back Pain Warriors" not in " ".join(text.split())


def test_two_lead_magnets_and_the_bundle_send_each_coaching_email_once(runtime, smtp):
    """plateau-14 (continues), then leaner-you (invites; this reader does not click), then (after two
    coaching weeks) the bundle itself: three welcomes, one invitation, week-01..12 once each, and from the
    bundle signup on the footer names the bundle."""
    assert join(runtime, "r@example.org", PLATEAU, T0) == "created"
    runtime.dispatcher().run_pass(T0)
    assert join(runtime, "r@example.org", "leaner-you", T0 + timedelta(days=2)) == "created"
    walk(runtime, T0 + timedelta(days=2), 15)  # leaner-you's welcome and invitation, week-01 and week-02
    # The bundle enrollment exists already (by continuation): the bundle's welcome is queued into it once.
    assert join(runtime, "r@example.org", BUNDLE, T0 + timedelta(days=17)) == "existing"
    walk(runtime, T0 + timedelta(days=17), 100)
    assert join(runtime, "r@example.org", BUNDLE, T0 + timedelta(days=117)) == "existing"
    walk(runtime, T0 + timedelta(days=117), 2)
    mails = smtp.handler.messages(to="r@example.org")
    subjects = Counter(m["Subject"] for m in mails)
    bundle = runtime.campaigns[BUNDLE]
    for step in bundle.steps:
        assert subjects[step.subject] == 1, step.key
    assert subjects[runtime.campaigns[PLATEAU].steps[0].subject] == 1
    assert [subjects[step.subject] for step in runtime.campaigns["leaner-you"].steps] == [1, 1]
    assert sum(subjects.values()) == 3 + len(bundle.steps)
    order = [m["Subject"] for m in mails]
    assert order.index(bundle.steps[0].subject) > order.index(bundle.steps[2].subject)  # after week-02
    last = " ".join(mails[-1].get_body(("plain",)).get_content().split())
    assert "Coach Sofia's weekly coaching emails" in last and "plateau" not in last.split("You're getting")[-1]
    with runtime.sessions() as s:
        rows = s.scalars(select(Message).where(Message.campaign == BUNDLE)).all()
        assert len({r.step_key for r in rows}) == len(rows)
        enrollments = s.scalars(select(Enrollment).where(Enrollment.campaign == BUNDLE)).all()
        sources = s.scalars(select(Consent.source).where(Consent.campaign == BUNDLE).order_by(Consent.id)).all()
    assert [e.origin_campaign for e in enrollments] == [None]  # the direct signup: footers name the bundle
    assert sources == ["continuation", "form"]


def test_only_the_lead_magnet_that_promised_coaching_continues(runtime):
    """plateau-14's form promised coaching emails: it continues at week-01. The five whose forms promised only
    a download invite to week-01 instead, and none of them both continues and invites."""
    magnets = [c for c in runtime.campaigns.values() if c.continue_into]
    assert [c.key for c in magnets] == [PLATEAU]
    assert {(c.continue_into, c.continue_at) for c in magnets} == {(BUNDLE, "week-01")}
    inviting = {c.key: (c.invite_to, c.invite_at) for c in runtime.campaigns.values()
                if c.invite_to == BUNDLE}
    assert inviting == {k: (BUNDLE, "week-01") for k in ("bodyweight-60", "fit-library", "glute-guide",
                                                          "goal-workbook", "leaner-you")}


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", dest)
    return dest


@pytest.mark.parametrize("old,new,message", [
    ('continue_into = "back-pain-bundle"', 'continue_into = "no-such"', "continue_into 'no-such'"),
    ('continue_at = "week-01"', 'continue_at = "week-99"', "continue_at 'week-99'"),
    ('continue_into = "back-pain-bundle"', 'continue_into = "plateau-14"', "is not another campaign"),
    ('continue_into = "back-pain-bundle"\n', "", "'continue_at' needs 'continue_into'"),
])
def test_bad_continuations_are_refused_at_load(tmp_path: Path, old: str, new: str, message: str) -> None:
    """A continuation naming a missing campaign or step stops loading, naming the file."""
    root = _copy(tmp_path)
    path = root / PLATEAU / "campaign.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(CampaignError) as err:
        load_campaigns(root)
    assert message in str(err.value) and PLATEAU in str(err.value)


def test_shared_coaching_steps_do_not_assume_the_bundle() -> None:
    """Readers arrive at the shared weekly steps from any lead magnet, so no step after the welcome
    speaks as if they had downloaded the back-pain bundle."""
    bundle = load_campaigns(ROOT / "email_templates")[BUNDLE]
    for step in bundle.steps[1:]:
        for ext in ("html", "txt"):
            text = " ".join((bundle.directory / f"{step.template}.{ext}").read_text().lower().split())
            for phrase in ("the bundle you", "downloaded the bundle", "your bundle", "part 2 of the bundle"):
                assert phrase not in text, (step.key, ext, phrase)
