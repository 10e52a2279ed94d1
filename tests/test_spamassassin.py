"""A real spam filter reads every email we ship: Debian's SpamAssassin (local rules, no network) scores
each step of each campaign, composed as sent, and none may score above 0.5. `make test` installs it
(`make spamassassin`), like Chromium for the browser tests. A control message with the hidden-preheader
trick the old layout used shows the filter, run this way, does see such things."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.campaigns.loader import load_campaigns
from service.cli import main
from service.compose import spamscore
from service.compose.composer import Composer
from service.compose.lint import sample_job

ROOT = Path(__file__).resolve().parent.parent / "email_templates"
pytestmark = pytest.mark.skipif(spamscore.spamassassin_path() is None,
                                reason="needs Debian's spamassassin: `make spamassassin` (make test installs it)")


@pytest.fixture(scope="module")
def scores() -> list[tuple[str, str, spamscore.SpamScore]]:
    campaigns = load_campaigns(ROOT)
    composer = Composer(templates_dir=ROOT, base_url="https://drip.example.org",
                        postal_address="Back Pain Warriors, 12 Long Street, Springfield, IL 62701, United States")
    return spamscore.score_campaigns(campaigns, composer)


def test_every_step_of_every_campaign_scores_at_most_half_a_point(scores) -> None:
    campaigns = load_campaigns(ROOT)
    assert len(scores) == sum(len(c.steps) for c in campaigns.values())
    over = [(c, s, found.score, found.tests) for c, s, found in scores if found.score > spamscore.LIMIT]
    assert over == []
    assert not any("HTML_FONT_LOW_CONTRAST" in found.tests for _c, _s, found in scores)


def test_the_filter_sees_low_contrast_hidden_text(tmp_path: Path) -> None:
    """The same welcome, composed from a copy of the templates with the old layout's `color: transparent`
    back on the hidden preheader, scores above the limit: the run does look at the HTML."""
    shutil.copytree(ROOT, tmp_path / "t")
    base = tmp_path / "t" / "_base" / "email.html"
    # exactly where the old layout had it (SpamAssassin's parser reads the declarations in order)
    base.write_text(base.read_text().replace("opacity: 0; height: 0;", "opacity: 0; color: transparent; height: 0;", 1))
    raws = []
    for root in (ROOT, tmp_path / "t"):
        composer = Composer(templates_dir=root, base_url="https://drip.example.org", postal_address="12 Long Street")
        campaign = load_campaigns(root)["back-pain-bundle"]
        raws.append(composer.compose(sample_job(campaign, campaign.steps[0], composer.base_url)).raw)
    # Scored together, in both orders: each score comes back to its own message (SpamAssassin's mbox reader
    # sorts by date, so its output order is not the input's).
    clean, bad, bad_again, clean_again = spamscore.score_messages([*raws, *reversed(raws)])
    assert "HTML_FONT_LOW_CONTRAST" in bad.tests and bad.score > spamscore.LIMIT >= clean.score
    assert (bad_again, clean_again) == (bad, clean)


def test_campaigns_check_reports_each_score(tmp_path: Path) -> None:
    """`drip campaigns check` prints one score line per step and passes when all are within the limit."""
    env = {"DRIP_SECRET_KEY": "k" * 32, "DRIP_TEMPLATES_DIR": str(ROOT), "DRIP_BASE_URL": "https://drip.example.org"}
    result = CliRunner().invoke(main, ["campaigns", "check"], env=env)
    lines = [line for line in result.output.splitlines() if "SpamAssassin score" in line]
    assert result.exit_code == 0, result.output
    assert len(lines) == sum(len(c.steps) for c in load_campaigns(ROOT).values())
    assert "back-pain-bundle/week-12: SpamAssassin score 0.0 (limit 0.5" in result.output


def test_the_transactional_emails_score_at_most_half_a_point_too() -> None:
    """The double opt-in confirmation, the come-back email and the two data links, as sent."""
    from datetime import UTC, datetime

    from service.compose.composer import TRANSACTIONAL, compose_confirmation

    campaign = load_campaigns(ROOT)["back-pain-bundle"]
    composer = Composer(templates_dir=ROOT, base_url="https://drip.example.org", postal_address="12 Long Street")
    raws = [compose_confirmation(composer, campaign=campaign, to_email="ada@example.org", name="Ada",
                                 confirm_url="https://drip.example.org/confirm/abc", now=datetime.now(UTC),
                                 unsubscribe_url="https://drip.example.org/unsubscribe/abc", pending_id=7,
                                 expiry_days=7, kind=kind).raw for kind in TRANSACTIONAL]
    scores = dict(zip(TRANSACTIONAL, spamscore.score_messages(raws), strict=True))
    assert {kind: found.score for kind, found in scores.items() if found.score > spamscore.LIMIT} == {}
    assert len(scores) == 4
