"""The shipped emails carry the safety copy a physiotherapist would ask for, read the way a reader gets them
(both parts rendered through the real composer): the full block in every welcome, the one-paragraph
reminder in every later coaching email, the belly-release cautions wherever the psoas release is taught;
footers without the postal placeholder, text lines a mail client will not break, no hidden low-contrast
text; a weekly series with an honest ending and a monthly one that says what happens after."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.campaigns.loader import load_campaigns
from service.compose.composer import Composer
from service.compose.lint import sample_job
from service.core.config import PLACEHOLDER_POSTAL_ADDRESS

ROOT = Path(__file__).resolve().parent.parent / "email_templates"
CAMPAIGNS = load_campaigns(ROOT)
COMPOSER = Composer(templates_dir=ROOT, base_url="https://drip.example.org", postal_address=PLACEHOLDER_POSTAL_ADDRESS)
# Campaigns whose emails coach (exercise, release, posture): every step after the welcome reminds.
COACHING = ("back-pain-bundle", "monthly-newsletter")
URGENT_SIGNS = ("saddle", "bladder", "bowel", "leg weakness", "fever", "fall", "night pain")


def rendered(campaign: str, step: str) -> tuple[str, str]:
    c = CAMPAIGNS[campaign]
    _subject, text, html = COMPOSER.render(sample_job(c, c.step_by_key(step), COMPOSER.base_url))
    return " ".join(text.split()), html


def plain(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).replace("&#39;", "'").replace("&quot;", '"').split())


STEPS = [(c.key, s.key) for c in CAMPAIGNS.values() for s in c.steps]
WELCOMES = [(c.key, c.steps[0].key) for c in CAMPAIGNS.values()]
COACHING_STEPS = [(key, s.key) for key in COACHING for s in CAMPAIGNS[key].steps[1:]]


def test_the_lists_are_not_empty() -> None:
    """Guards the parametrised tests below from passing on nothing."""
    assert len(WELCOMES) == 8 and len(COACHING_STEPS) == 24


@pytest.mark.parametrize("campaign,step", WELCOMES)
def test_every_welcome_has_the_full_safety_block(campaign: str, step: str) -> None:
    """Each lead magnet hands out exercises or a plan; its welcome names the urgent signs with what to do,
    says it is not a diagnosis, sends leg pain below the knee to be assessed and lists the psoas cautions."""
    for part in rendered(campaign, step):
        part = plain(part)
        assert "not a diagnosis" in part
        assert "Get medical help the same day" in part
        for words in ("saddle", "bladder", "bowel", "weakness in a leg that is getting worse", "fever",
                      "a fall or an accident", "pain at night that doesn't ease", "below your knee", "tingling",
                      "pulse under your hand", "pregnant", "hernia", "surgery on your belly"):
            assert words in part, (campaign, step, words)


@pytest.mark.parametrize("campaign,step", COACHING_STEPS)
def test_every_coaching_email_carries_the_reminder(campaign: str, step: str) -> None:
    """The one-paragraph reminder, in the text and the HTML part of every weekly and monthly email."""
    for part in rendered(campaign, step):
        part = plain(part)
        assert "these emails are not a diagnosis" in part, (campaign, step)
        for sign in URGENT_SIGNS:
            assert sign in part, (campaign, step, sign)
        assert "below your knee" in part


@pytest.mark.parametrize("campaign,step", STEPS)
def test_the_psoas_release_is_never_suggested_without_its_cautions(campaign: str, step: str) -> None:
    """Wherever an email links the belly-pressing release, the reader meets the cautions in that same email,
    and nothing invites deeper pressure."""
    text, html = rendered(campaign, step)
    if "psoas-release-technique" in html:
        assert "pulse under your hand" in plain(html) and "pulse under your hand" in text, (campaign, step)
    for part in (text, plain(html)):
        assert not re.search(r"sink (in|deeper)|deeper (pressure|release)|press harder", part, re.I), (campaign, step)


def test_weakly_supported_mechanisms_are_hedged() -> None:
    """The glute-inhibition idea and the hips-to-shoulders chain read as possibilities, not facts."""
    week2, _ = rendered("back-pain-bundle", "week-02")
    week3, _ = rendered("back-pain-bundle", "week-03")
    assert "switch your glutes" not in week2 and "for some people" in week2 and "research" in week2
    assert "tell your glutes" not in week3 and "for some people" in week3 and "not a rule" in week3


def test_weekly_buttons_vary() -> None:
    """No single page is the button of most weekly emails (it was the psoas page in 6 of 9)."""
    targets = []
    for step in CAMPAIGNS["back-pain-bundle"].steps[1:]:
        source = (ROOT / "back-pain-bundle" / f"{step.template}.html").read_text()
        targets += re.findall(r"m\.button\(([\w.]+),", source)
    assert len(targets) >= 10
    assert max(targets.count(t) for t in set(targets)) <= 3, targets


def test_weekly_coaching_runs_twelve_weeks_and_says_when_it_ends() -> None:
    """At least 12 weekly emails; the last says so and offers the monthly newsletter with one link."""
    bundle = CAMPAIGNS["back-pain-bundle"]
    weekly = [s for s in bundle.steps if s.key.startswith("week-")]
    assert len(weekly) >= 12 and all(s.delay.days == 7 for s in weekly)
    text, html = rendered("back-pain-bundle", bundle.steps[-1].key)
    assert "last email in my weekly coaching series" in text
    assert "https://drip.example.org/join/sample" in html and "monthly newsletter" in text
    assert bundle.invite_to == "monthly-newsletter" and bundle.invite_at == "month-01"


def test_monthly_newsletter_runs_a_year_and_says_what_happens_after() -> None:
    news = CAMPAIGNS["monthly-newsletter"]
    monthly = [s for s in news.steps if s.key.startswith("month-")]
    assert len(monthly) == 12
    text, _ = rendered("monthly-newsletter", news.steps[-1].key)
    assert "last one in the series" in text and "newsletter stops" in text


@pytest.mark.parametrize("campaign,step", STEPS)
def test_footers_are_honest_and_fit_a_text_mail_client(campaign: str, step: str) -> None:
    """No postal placeholder; the unsubscribe line says a page opens; text lines <= 78 characters except
    lines that are a bare link; the hidden preheader is not low-contrast text."""
    c = CAMPAIGNS[campaign]
    _subject, text, html = COMPOSER.render(sample_job(c, c.step_by_key(step), COMPOSER.base_url))
    assert "not configured" not in text and "not configured" not in html
    assert "with one click" not in text.lower() and "with one click" not in html.lower()
    assert "the link opens a page with one button" in " ".join(text.split())
    body, _, footer = text.rpartition("\n--\n")
    # A link cannot be wrapped: in the body a line may run long only because of one; in the footer a link
    # stands on its own line.
    long = [line for line in body.splitlines() if len(line) > 78 and "://" not in line]
    long += [line for line in footer.splitlines() if len(line) > 78 and not re.fullmatch(r"https?://\S+", line)]
    assert footer and long == [], long
    assert "color: transparent" not in html


def test_a_real_postal_address_is_in_every_footer() -> None:
    """With DRIP_POSTAL_ADDRESS set, both parts show it (wrapped in the text part)."""
    composer = Composer(templates_dir=ROOT, base_url="https://drip.example.org",
                        postal_address="Back Pain Warriors, 12 Long Street, Springfield, IL 62701, United States")
    c = CAMPAIGNS["back-pain-bundle"]
    _subject, text, html = composer.render(sample_job(c, c.steps[1], composer.base_url))
    assert "12 Long Street, Springfield" in html and "12 Long Street, Springfield" in text
