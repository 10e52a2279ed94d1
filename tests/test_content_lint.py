"""`drip campaigns check` content lint: each rule on a small temporary campaign, through the real command."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import main

PROSE = ("This week we look at the psoas, a deep hip flexor that links your spine to your legs. "
         "When it stays short from long hours of sitting it pulls on the lower back, and stretching the "
         "hamstrings will not fix that. Try the release technique below for two minutes on each side, "
         "breathing slowly, and notice how your back feels when you stand up afterwards. ") * 2
GOOD_HTML = (f'<html><head><style>p {{ color: #333; }}</style></head><body><p>{PROSE}</p>'
             '<p><a href="{{ resources.psoas }}">Psoas release</a></p>'
             '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>')
GOOD_TEXT = PROSE + "\n\nPsoas release: {{ resources.psoas }}\n\nUnsubscribe: {{ unsubscribe_url }}\n"
TOML = """title = "Lint test"
from = "Coach <coach@lint.example>"
timezone = "UTC"
consent = "Weekly emails."
why = "You asked for them."

[resources]
psoas = "https://lint.example/psoas/"

[[steps]]
key = "one"
delay = "0"
subject = "{subject}"
"""


def run(tmp_path: Path, *, html: str = GOOD_HTML, text: str = GOOD_TEXT, subject: str = "Meet the psoas"):
    root = tmp_path / "templates"
    (root / "lint").mkdir(parents=True)
    (root / "lint" / "campaign.toml").write_text(TOML.format(subject=subject))
    (root / "lint" / "one.html").write_text(html)
    (root / "lint" / "one.txt").write_text(text)
    env = {"DRIP_SECRET_KEY": "k" * 32, "DRIP_TEMPLATES_DIR": str(root), "DRIP_BASE_URL": "https://drip.example.org"}
    return CliRunner().invoke(main, ["campaigns", "check", "--no-spam-score"], env=env)


def test_a_clean_campaign_passes(tmp_path: Path) -> None:
    """The well-formed sample has no findings and exits 0."""
    result = run(tmp_path)
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("1 campaign(s), 1 step(s): 0 error(s), 0 warning(s)")


def test_the_shipped_campaign_passes() -> None:
    """The campaign in email_templates/ is clean."""
    result = CliRunner().invoke(main, ["campaigns", "check", "--no-spam-score"], env={"DRIP_SECRET_KEY": "k" * 32,
                                                                   "DRIP_BASE_URL": "https://drip.example.org"})
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("change", "level", "message"), [
    ({"html": GOOD_HTML.replace("</body>", "<p>" + "x" * 110_000 + "</p></body>")}, "error",
     "Gmail clips past ~102 KB"),
    ({"text": "   \n"}, "error", "no text part"),
    ({"subject": "A subject line that goes on and on well past the seventy-eight characters an inbox shows"},
     "warning", "subject is 88 characters"),
    ({"subject": "FREE BUNDLE INSIDE!"}, "warning", "all capitals"),
    ({"html": '<html><body><img src="https://lint.example/a.png"><img src="https://lint.example/b.png">'
              '<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>'}, "error", "image-only email: 2 image"),
    ({"html": GOOD_HTML.replace("{{ resources.psoas }}", "https://bit.ly/3xYz")}, "error",
     "URL shortener bit.ly"),
    ({"text": GOOD_TEXT + "More: https://tinyurl.com/abc\n"}, "error", "URL shortener tinyurl.com"),
    ({"html": GOOD_HTML.replace('<a href="{{ unsubscribe_url }}">Unsubscribe</a>', "")}, "error",
     "HTML body has no unsubscribe link"),
    ({"text": PROSE}, "error", "text body has no unsubscribe link"),
    ({"html": GOOD_HTML.replace("{{ resources.psoas }}", "https://lint.example/old-page/")}, "error",
     "link https://lint.example/old-page/ is not one of the campaign's [resources] URLs"),
    ({"html": GOOD_HTML.replace("{{ resources.psoas }}", "{{ nope }}")}, "error", "does not render: UndefinedError"),
])
def test_each_rule(tmp_path: Path, change: dict, level: str, message: str) -> None:
    """One defect per campaign: the command names the file, the step, the level and the problem."""
    result = run(tmp_path, **change)
    lines = [line for line in result.output.splitlines() if message in line]
    assert lines, result.output
    assert "lint/campaign.toml: step one: " + level + ": " in lines[0]
    assert result.exit_code == (1 if level == "error" else 0)


def test_links_to_the_base_url_and_fragments_are_allowed(tmp_path: Path) -> None:
    """Links on the service's own base URL and a resource URL with a #fragment are not findings."""
    html = GOOD_HTML.replace("{{ resources.psoas }}", "https://lint.example/psoas/#step-2").replace(
        "</body>", '<a href="https://drip.example.org/">home</a><a href="mailto:coach@lint.example">mail</a></body>')
    result = run(tmp_path, html=html)
    assert result.exit_code == 0, result.output
