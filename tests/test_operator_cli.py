"""The operator's terminal commands: `drip log` with the send log page's filters, `drip stats`, and
`drip subscribers export` / `erase` (GDPR) on the real database."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import at
from sqlalchemy import func, select
from test_admin_api import seed

from service.cli import main
from service.core.models import Consent, Event, Message, MessageContent, Subscriber, Suppression
from service.enrollment.suppression import email_hash

T0 = at("2026-02-02T09:00:00")


@pytest.fixture
def run(runtime, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key,
           "DRIP_EMAIL_URL": runtime.settings.email_url}
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(main, list(args), env=env, input=input)
    return invoke


def test_drip_log_prints_the_filtered_send_log(run, runtime, smtp):
    """`drip log` prints a table newest first; --status and --email filter; --json gives one object per line."""
    smtp.handler.script("bad@example.org", "RCPT", "550 5.1.1 unknown")
    seed(runtime, "good@example.org", "bad@example.org")
    runtime.dispatcher().run_pass(T0)
    r = run("log")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:3] == ["id", "created_at", "to"]
    assert "bad@example.org" in lines[1] and "bounced" in lines[1] and "good@example.org" in lines[2]
    r = run("log", "--status", "sent")
    assert "good@example.org" in r.output and "bad@example.org" not in r.output
    rows = [json.loads(line) for line in run("log", "--json", "--email", "BAD").output.splitlines()]
    assert [(x["to"], x["status"]) for x in rows] == [("bad@example.org", "bounced")]
    assert run("log", "--since", "2026-02-03").output.count("@") == 0
    r = run("log", "--until", "someday")
    assert r.exit_code != 0 and "not a date" in r.output


def test_drip_stats_prints_campaign_health(run, runtime, smtp):
    """`drip stats` shows each campaign's enrollments and, per step, what was sent and bounced."""
    smtp.handler.script("b@example.org", "RCPT", "550 5.1.1 unknown")
    seed(runtime, "a@example.org", "b@example.org")
    runtime.dispatcher().run_pass(T0)
    r = run("stats")
    assert r.exit_code == 0, r.output
    assert "back-pain-bundle (running): 1 active, 0 completed, 1 stopped" in r.output
    welcome = next(line for line in r.output.splitlines() if line.strip().startswith("1. "))
    assert welcome.split()[2:6] == ["0", "1", "0", "1"]  # waiting, sent, delivered, bounced
    data = json.loads(run("stats", "--json").output)
    assert data[0]["steps"][0]["bounced"] == 1


def test_subscribers_export_and_erase(run, runtime, smtp):
    """Export prints everything held about the person as JSON; erase removes every row and leaves the hash."""
    seed(runtime, "Kim@Example.org", "other@example.org")
    runtime.dispatcher().run_pass(T0)
    r = run("subscribers", "export", "kim@example.org")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["subscriber"]["email"] == "Kim@example.org"
    assert [c["source"] for c in data["consents"]] == ["json"]
    assert [m["status"] for m in data["messages"]] == ["sent"]
    assert {"signup", "queued", "attempt", "sent"} <= {e["type"] for e in data["events"]}
    assert run("subscribers", "erase", "kim@example.org", input="n\n").exit_code != 0  # asks first
    r = run("subscribers", "erase", "kim@example.org", "--yes")
    assert r.exit_code == 0 and email_hash("kim@example.org") in r.output
    with runtime.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 1
        assert s.scalar(select(func.count()).select_from(Consent)) == 1
        assert s.scalar(select(func.count()).select_from(Message)) == 1
        assert s.scalar(select(func.count()).select_from(MessageContent)) == 1
        assert s.scalar(select(func.count()).select_from(Event).where(Event.detail.like("%kim%"))) == 0
        assert s.scalar(select(Suppression.reason).where(Suppression.email_hash == email_hash("kim@example.org")))
    r = run("subscribers", "export", "kim@example.org")
    assert r.exit_code != 0 and "no subscriber" in r.output
