"""`drip campaigns check` names the file AND the line of each kind of error: a missing template,
an unknown variable, a bad delay, a duplicate step key, a broken link (and a bad send window)."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import main

PROSE = ("This week we look at the psoas, a deep hip flexor that links your spine to your legs. When it "
         "stays short from long hours of sitting it pulls on the lower back. Try the release below. ") * 3
HTML = ("<html><body>\n<p>{greeting}</p>\n<p>" + PROSE + "</p>\n{extra}\n"
        '<p><a href="{{{{ resources.psoas }}}}">Psoas</a></p>\n'
        '<p><a href="{{{{ unsubscribe_url }}}}">Unsubscribe</a></p>\n</body></html>\n')
TEXT = "{{ greeting }}\n\n" + PROSE + "\n\nPsoas: {{ resources.psoas }}\nUnsubscribe: {{ unsubscribe_url }}\n"
TOML = """title = "Check test"
from = "Coach <coach@check.example>"
timezone = "UTC"
consent = "Weekly emails."
why = "You asked for them."

[resources]
psoas = "https://check.example/psoas/"

[[steps]]
key = "one"
delay = "0"
subject = "Meet the psoas"

[[steps]]
key = "two"
delay = "{delay}"
subject = "More psoas"
template = "{template}"
"""


def run(tmp_path: Path, *, delay: str = "7d", template: str = "two", second_key: str = "two",
        greeting: str = "{{ greeting }}", extra: str = ""):
    folder = tmp_path / "templates" / "check"
    folder.mkdir(parents=True)
    (folder / "campaign.toml").write_text(
        TOML.format(delay=delay, template=template).replace('key = "two"', f'key = "{second_key}"'))
    for key in ("one", "two"):
        (folder / f"{key}.html").write_text(HTML.format(greeting=greeting, extra=extra))
        (folder / f"{key}.txt").write_text(TEXT)
    env = {"DRIP_SECRET_KEY": "k" * 32, "DRIP_TEMPLATES_DIR": str(tmp_path / "templates"),
           "DRIP_BASE_URL": "https://drip.example.org"}
    return CliRunner().invoke(main, ["campaigns", "check", "--no-spam-score"], env=env), folder


def test_clean_campaign_passes(tmp_path: Path) -> None:
    """The sample campaign itself has no findings."""
    result, _ = run(tmp_path)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("kwargs,where,message", [
    ({"template": "missing"}, "campaign.toml:19", "missing template"),
    ({"delay": "seven days"}, "campaign.toml:17", "bad delay 'seven days'"),
    ({"second_key": "one"}, "campaign.toml:16", "duplicate step key 'one'"),
    ({"greeting": "{{ no_such_variable }}"}, "one.html:2", "'no_such_variable' is undefined"),
    ({"extra": '<p><a href="https://elsewhere.example/page">x</a></p>'}, "one.html:4",
     "link https://elsewhere.example/page is not one of the campaign's [resources] URLs"),
])
def test_each_error_names_file_and_line(tmp_path: Path, kwargs: dict, where: str, message: str) -> None:
    """Each kind of error exits 1 with the file and the line where it is written."""
    result, folder = run(tmp_path, **kwargs)
    assert result.exit_code == 1, result.output
    assert f"{folder / where}" in result.output and message in result.output, result.output


def test_bad_send_days_names_its_line(tmp_path: Path) -> None:
    """A bad top-level value (here send_days) is reported at its own line."""
    _, folder = run(tmp_path)
    toml = folder / "campaign.toml"
    toml.write_text(toml.read_text().replace('timezone = "UTC"\n', 'timezone = "UTC"\nsend_days = ["funday"]\n'))
    env = {"DRIP_SECRET_KEY": "k" * 32, "DRIP_TEMPLATES_DIR": str(tmp_path / "templates")}
    result = CliRunner().invoke(main, ["campaigns", "check", "--no-spam-score"], env=env)
    assert result.exit_code == 1 and f"{toml}:4: send_days: unknown day 'funday'" in result.output


def test_a_broken_confirmation_template_is_reported(tmp_path: Path) -> None:
    """For a double opt-in campaign, check also renders its own confirm.* and names the file and line."""
    _, folder = run(tmp_path)
    toml = folder / "campaign.toml"
    toml.write_text(toml.read_text().replace('timezone = "UTC"\n', 'timezone = "UTC"\ndouble_opt_in = true\n'))
    (folder / "confirm.html").write_text("<p>{{ confirm_url }}</p>\n<p>{{ no_such_thing }}</p>\n")
    (folder / "confirm.txt").write_text("{{ confirm_url }}\n")
    env = {"DRIP_SECRET_KEY": "k" * 32, "DRIP_TEMPLATES_DIR": str(tmp_path / "templates")}
    result = CliRunner().invoke(main, ["campaigns", "check", "--no-spam-score"], env=env)
    assert result.exit_code == 1
    assert "confirmation email: error: does not render" in result.output
    assert f"{folder / 'confirm.html'}:2" in result.output
