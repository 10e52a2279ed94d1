"""Data retention (issue 7): DRIP_EVENT_RETENTION_DAYS deletes old history and stored emails, keeps opt-out evidence."""
from __future__ import annotations

from datetime import timedelta

from click.testing import CliRunner
from conftest import at
from sqlalchemy import func, select

from service import events
from service.cli import main
from service.models import Event, MessageContent
from service.retention import prune
from service.signups import ConsentMeta, parse_signup, signup

T0 = at("2026-01-05T10:00:00")


def test_old_events_and_stored_emails_go_evidence_stays(runtime, smtp):  # noqa: ANN001
    """After the retention period the send history and stored bytes are deleted; an unsubscribe record is not."""
    data = parse_signup({"email": "old@example.org"}, campaigns=runtime.campaigns, default_campaign="back-pain-bundle")
    with runtime.sessions() as s, s.begin():
        sub_id = signup(s, data, campaign=runtime.campaigns["back-pain-bundle"], meta=ConsentMeta("json"),
                        now=T0).subscriber_id
    assert runtime.dispatcher().run_pass(T0).sent == 1
    with runtime.sessions() as s, s.begin():
        events.record(s, type="unsubscribed", now=T0, subscriber_id=sub_id, detail="one-click")
        assert s.scalar(select(func.count()).select_from(MessageContent)) == 1
    later = T0 + timedelta(days=400)
    with runtime.sessions() as s, s.begin():
        assert prune(s, now=T0 + timedelta(days=10), days=365).events == 0  # nothing old enough yet
        pruned = prune(s, now=later, days=365)
    assert pruned.events >= 3 and pruned.contents == 1
    with runtime.sessions() as s:
        assert s.scalars(select(Event.type)).all() == ["unsubscribed"]
        assert s.scalar(select(func.count()).select_from(MessageContent)) == 0


def test_prune_command_needs_a_period(runtime, monkeypatch, tmp_path):  # noqa: ANN001
    """`drip prune` refuses to run without a retention period rather than guess one."""
    monkeypatch.chdir(tmp_path)
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key}
    r = CliRunner().invoke(main, ["prune"], env=env)
    assert r.exit_code != 0 and "DRIP_EVENT_RETENTION_DAYS" in r.output
    r = CliRunner().invoke(main, ["prune", "--days", "30"], env=env)
    assert r.exit_code == 0 and r.output.startswith("prune: ")


def test_old_events_are_found_by_id_and_nothing_newer_is_ever_deleted(runtime):  # noqa: ANN001
    """Issue 6: retention bisects the events' ids (no index on their time). An old event written after a
    newer one (a late outcome) waits for a later pruning; no event newer than the cutoff goes."""
    from service.retention import last_event_before

    ages = [900, 800, 700, 30, 600, 20, 10]  # days before "now", in the order written; 600 came late
    now = T0 + timedelta(days=1000)
    with runtime.sessions() as s, s.begin():
        assert last_event_before(s, now) is None  # no events at all
        for n, age in enumerate(ages):
            events.record(s, type="sent", now=now - timedelta(days=age), detail=f"event {n}")
    with runtime.sessions() as s, s.begin():
        assert prune(s, now=now, days=1000).events == 0  # the oldest is 900 days old
        assert prune(s, now=now, days=365).events == 3
        assert sorted(s.scalars(select(Event.detail))) == ["event 3", "event 4", "event 5", "event 6"]
    with runtime.sessions() as s, s.begin():  # 350 days on, everything but the last one is old
        assert prune(s, now=now + timedelta(days=350), days=365).events == 3
        assert s.scalars(select(Event.detail)).all() == ["event 6"]
