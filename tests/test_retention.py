"""Data retention: DRIP_EVENT_RETENTION_DAYS deletes old history and stored emails, keeps opt-out evidence."""
from __future__ import annotations

from datetime import timedelta

from click.testing import CliRunner
from conftest import at
from sqlalchemy import func, select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.cli import main
from service.core import events
from service.core.models import Event, MessageContent
from service.dispatch.retention import prune

T0 = at("2026-01-05T10:00:00")


def test_old_events_and_stored_emails_go_evidence_stays(runtime, smtp):
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
    assert prune(runtime.sessions, now=T0 + timedelta(days=10), days=365).events == 0  # nothing old enough yet
    pruned = prune(runtime.sessions, now=later, days=365)
    assert pruned.events >= 3 and pruned.contents == 1
    with runtime.sessions() as s:
        assert s.scalars(select(Event.type)).all() == ["unsubscribed"]
        assert s.scalar(select(func.count()).select_from(MessageContent)) == 0


def test_prune_command_needs_a_period(runtime, monkeypatch, tmp_path):
    """`drip prune` refuses to run without a retention period rather than guess one."""
    monkeypatch.chdir(tmp_path)
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key}
    r = CliRunner().invoke(main, ["prune"], env=env)
    assert r.exit_code != 0 and "DRIP_EVENT_RETENTION_DAYS" in r.output
    r = CliRunner().invoke(main, ["prune", "--days", "30"], env=env)
    assert r.exit_code == 0 and r.output.startswith("prune: ")


def test_prune_goes_in_small_batches_and_keeps_recent_rows_and_evidence(runtime, smtp):
    """Batches of a few rows each (the real limit is 10,000): every old row goes, over several batches whose
    totals only grow; the newer readers' history and stored emails stay, and so does the opt-out evidence."""
    addresses = [f"old{i}@example.org" for i in range(5)] + [f"new{i}@example.org" for i in range(3)]
    for i, address in enumerate(addresses):
        when = T0 if address.startswith("old") else T0 + timedelta(days=300)
        data = parse_signup({"email": address}, campaigns=runtime.campaigns, default_campaign="back-pain-bundle")
        with runtime.sessions() as s, s.begin():
            sub_id = signup(s, data, campaign=runtime.campaigns["back-pain-bundle"], meta=ConsentMeta("json"),
                            now=when + timedelta(seconds=i)).subscriber_id
            if i == 0:
                events.record(s, type="unsubscribed", now=T0, subscriber_id=sub_id, detail="one-click")
    assert runtime.dispatcher().run_pass(T0 + timedelta(minutes=1)).sent == 5
    assert runtime.dispatcher().run_pass(T0 + timedelta(days=300, minutes=1)).sent >= 3
    with runtime.sessions() as s:
        stored = s.scalar(select(func.count()).select_from(MessageContent))
        old_events = s.scalar(select(func.count()).select_from(Event).where(
            Event.created_at < T0 + timedelta(days=100), Event.type != "unsubscribed"))
        new_events = s.scalar(select(func.count()).select_from(Event).where(
            Event.created_at > T0 + timedelta(days=100)))
    seen = []
    pruned = prune(runtime.sessions, now=T0 + timedelta(days=400), days=365, batch=2, progress=seen.append)
    assert pruned.events == old_events and pruned.contents == 5
    assert len(seen) >= old_events // 2 + 2  # one report per batch: events, then stored copies
    assert [p.events for p in seen] == sorted(p.events for p in seen)
    with runtime.sessions() as s:
        left = s.execute(select(Event.type, Event.created_at)).all()
        assert sum(1 for t, at_ in left if at_ < T0 + timedelta(days=100)) == 1  # the unsubscribe only
        assert sum(1 for _t, at_ in left if at_ > T0 + timedelta(days=100)) == new_events
        assert s.scalar(select(func.count()).select_from(MessageContent)) == stored - 5 >= 3
