"""`drip preview` writes a rendered step to files; `drip send-test` sends it marked as a test and
keeps it out of the message log."""
from __future__ import annotations

import email
import email.policy

from click.testing import CliRunner
from sqlalchemy import func, select

from service.cli import main
from service.core.models import Event, Message


def env_for(runtime, smtp) -> dict[str, str]:
    return {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key,
            "DRIP_EMAIL_URL": smtp.url, "DRIP_BASE_URL": "https://drip.example.org",
            "DRIP_POSTAL_ADDRESS": "1 Preview Street"}


def test_preview_writes_eml_html_and_text(runtime, smtp, tmp_path, monkeypatch):
    """The step is written as .eml/.html/.txt in the folder, with the sample reader and the footer; nothing is sent."""
    monkeypatch.chdir(tmp_path)
    step = runtime.campaigns["glute-guide"].steps[0]
    result = CliRunner().invoke(main, ["preview", "glute-guide", "welcome", "--out", "out"],
                                env=env_for(runtime, smtp))
    assert result.exit_code == 0, result.output
    eml = (tmp_path / "out" / "glute-guide-welcome.eml").read_bytes()
    msg = email.message_from_bytes(eml, policy=email.policy.default)
    assert msg["Subject"] == step.subject and "X-Drip-Test" not in msg
    text = (tmp_path / "out" / "glute-guide-welcome.txt").read_text()
    assert "Hi Ada," in text and "1 Preview Street" in text
    assert "<html" in (tmp_path / "out" / "glute-guide-welcome.html").read_text().lower()
    assert smtp.handler.messages() == []


def test_send_test_is_marked_and_not_recorded(runtime, smtp, tmp_path, monkeypatch):
    """send-test goes through the configured SMTP relay with "[TEST] " and X-Drip-Test: 1; no message or
    event row is written, so the stats never count it."""
    monkeypatch.chdir(tmp_path)
    step = runtime.campaigns["back-pain-bundle"].step_by_key("week-03")
    result = CliRunner().invoke(main, ["send-test", "back-pain-bundle", "week-03", "--to", "me@example.org"],
                                env=env_for(runtime, smtp))
    assert result.exit_code == 0, result.output
    [msg] = smtp.handler.messages(to="me@example.org")
    assert msg["Subject"] == f"[TEST] {step.subject}" and msg["X-Drip-Test"] == "1"
    with runtime.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 0
        assert s.scalar(select(func.count()).select_from(Event)) == 0


def test_unknown_campaign_step_or_address_is_a_clear_error(runtime, smtp, tmp_path, monkeypatch):
    """A wrong campaign, step or address names what exists or what is wrong, exit 1 or 2, nothing sent."""
    monkeypatch.chdir(tmp_path)
    env = env_for(runtime, smtp)
    r = CliRunner().invoke(main, ["preview", "nope", "welcome"], env=env)
    assert r.exit_code == 1 and "no campaign 'nope'" in r.output
    r = CliRunner().invoke(main, ["preview", "glute-guide", "week-99"], env=env)
    assert r.exit_code == 1 and "has no step 'week-99'" in r.output and "welcome" in r.output
    r = CliRunner().invoke(main, ["send-test", "glute-guide", "welcome", "--to", "not-an-address"], env=env)
    assert r.exit_code == 2 and "--to" in r.output
    assert smtp.handler.messages() == []
