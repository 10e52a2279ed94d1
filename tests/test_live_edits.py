"""Editing a live campaign is safe: removed steps are skipped, appended steps reach readers who had
finished, reordering and delay changes have their documented effect, and `drip campaigns diff` shows it."""
from __future__ import annotations

import re
import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from conftest import ROOT, at, with_settings
from sqlalchemy import select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.cli import main
from service.commands.context import sync_campaign_folders
from service.core.models import Enrollment, Message, Subscriber

T0 = at("2026-06-01T20:00:00")  # a Monday; readers joined 0, 3 and 12 weeks before
BUNDLE = "back-pain-bundle"


def join(rt, email: str, now) -> None:
    data = parse_signup({"email": email}, campaigns=rt.campaigns, default_campaign=BUNDLE)
    with rt.sessions() as s, s.begin():
        signup(s, data, campaign=rt.campaigns[BUNDLE], meta=ConsentMeta("json"), now=now)


def walk(rt, start, days: int) -> None:
    d = rt.dispatcher(max_per_day=0)
    for n in range(days + 1):
        d.run_pass(start + timedelta(days=n))


def readers_at_three_places(rt) -> None:
    """new@ got the welcome only; mid@ got welcome..week-03; done@ completed the sequence."""
    join(rt, "done@example.org", T0 - timedelta(weeks=14))
    join(rt, "mid@example.org", T0 - timedelta(weeks=3))
    join(rt, "new@example.org", T0)
    walk(rt, T0 - timedelta(weeks=14), 14 * 7)


def edited(rt, tmp_path: Path, edit) -> object:
    root = tmp_path / "edited"
    shutil.copytree(ROOT / "email_templates", root)
    edit(root / BUNDLE)
    return with_settings(rt, templates_dir=root)


def got(rt) -> dict[str, list[str]]:
    with rt.sessions() as s:
        rows = s.execute(select(Message.to_email, Message.step_key, Message.status).order_by(Message.sent_at)).all()
    out: dict[str, list[str]] = {}
    for email, key, status in rows:
        assert status == "sent"
        out.setdefault(email.split("@")[0], []).append(key)
    return out


def remove_week_04_and_append_week_13(folder: Path) -> None:
    toml = folder / "campaign.toml"
    text = re.sub(r'\[\[steps\]\]\nkey = "week-04".*?(?=\n\[\[steps\]\])', "", toml.read_text(), flags=re.S)
    text += ('\n[[steps]]\nkey = "week-13"\ndelay = "7d"\nsubject = "One more thing for your back"\n'
             'template = "week-09"\n')
    toml.write_text(text)


def test_removed_step_is_skipped_and_appended_step_reaches_finished_readers(runtime, smtp, tmp_path):
    """With week-04 removed and week-13 appended: new@ and mid@ skip week-04 (mid@ was due it next) and
    get week-13; done@ (completed) is reactivated and gets only week-13; nobody gets anything twice."""
    readers_at_three_places(runtime)
    before = got(runtime)
    assert before["mid"] == ["welcome", "week-01", "week-02", "week-03"]
    assert before["done"][-1] == "week-12" and before["new"] == ["welcome"]
    rt = edited(runtime, tmp_path, remove_week_04_and_append_week_13)
    walk(rt, T0, 14 * 7)
    after = got(rt)
    weeks = [f"week-{n:02d}" for n in range(1, 14) if n != 4]
    assert after["new"] == ["welcome", *weeks]
    assert after["mid"] == ["welcome", "week-01", "week-02", "week-03", *weeks[3:]]
    assert after["done"] == before["done"] + ["week-13"]
    for keys in after.values():
        assert len(keys) == len(set(keys))
    with rt.sessions() as s:
        assert set(s.scalars(select(Enrollment.status))) == {"completed"}
    rt.sessions.kw["bind"].dispose()


def test_diff_shows_moved_readers(runtime, smtp, tmp_path):
    """A step inserted before a reader's next step: `diff` reports them as moved, with what comes next."""
    from service.enrollment.live_edits import diff

    readers_at_three_places(runtime)

    def insert_before_week_04(folder: Path) -> None:
        toml = folder / "campaign.toml"
        toml.write_text(toml.read_text().replace('[[steps]]\nkey = "week-04"', '[[steps]]\nkey = "extra"\n'
                        'delay = "7d"\nsubject = "An extra one"\ntemplate = "week-09"\n\n[[steps]]\nkey = "week-04"'))
    rt = edited(runtime, tmp_path, insert_before_week_04)
    with rt.sessions() as s:
        lines = {d.line() for d in diff(s, rt.campaigns)}
    assert f"{BUNDLE}: moved: 1 reader(s): next: extra" in lines  # mid@ was pointed at week-04
    rt.sessions.kw["bind"].dispose()


def test_reorder_and_delay_change(runtime, smtp, tmp_path):
    """week-06 and week-07 swapped, and week-05 made 3 days: mid@ (at week-04 next) gets week-05 three days
    after week-04, then week-07, week-06, week-08; new@ too; done@ gets nothing more."""
    readers_at_three_places(runtime)

    def edit(folder: Path) -> None:
        toml = folder / "campaign.toml"
        text = toml.read_text()
        blocks = text.split("[[steps]]")
        i6 = next(i for i, b in enumerate(blocks) if 'key = "week-06"' in b)
        blocks[i6], blocks[i6 + 1] = blocks[i6 + 1], blocks[i6]
        i5 = next(i for i, b in enumerate(blocks) if 'key = "week-05"' in b)
        blocks[i5] = blocks[i5].replace('delay = "7d"', 'delay = "3d"')
        toml.write_text("[[steps]]".join(blocks))
    rt = edited(runtime, tmp_path, edit)
    walk(rt, T0, 14 * 7)
    after = got(rt)
    order = ["welcome", "week-01", "week-02", "week-03", "week-04", "week-05", "week-07", "week-06", "week-08",
             "week-09", "week-10", "week-11", "week-12"]
    assert after["mid"] == order and after["new"] == order
    assert Counter(after["done"]) == Counter(order)  # unchanged: it had them all, once
    with rt.sessions() as s:
        sent = {k: t for k, t in s.execute(select(Message.step_key, Message.sent_at)
                                           .where(Message.to_email == "mid@example.org"))}
    assert (sent["week-05"] - sent["week-04"]).days in (2, 3)  # 3 local days, landing on the send hour
    rt.sessions.kw["bind"].dispose()


def test_campaigns_diff_counts_readers_per_change(runtime, smtp, tmp_path, monkeypatch):
    """`drip campaigns diff` against the edited files (week-04 removed, week-13 appended): mid@ was due the
    removed step and gets week-05 next, done@ gets week-13, new@ is unaffected; the database is untouched."""
    readers_at_three_places(runtime)
    sync_campaign_folders(runtime)  # the shipped folders are in the database too: diff still reads the files
    rt = edited(runtime, tmp_path, remove_week_04_and_append_week_13)
    monkeypatch.chdir(tmp_path)
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key,
           "DRIP_TEMPLATES_DIR": str(tmp_path / "edited")}
    result = CliRunner().invoke(main, ["campaigns", "diff"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"{BUNDLE}: removed+appended: 1 reader(s): next: week-13" in lines  # done@ had week-04
    assert f"{BUNDLE}: removed: 1 reader(s): next: week-05" in lines  # mid@ was due week-04 next
    assert f"{BUNDLE}: unchanged: 1 reader(s): next: week-01" in lines  # new@
    assert lines[-1] == "campaigns diff: 2 enrolled reader(s) affected by the files as they are now"
    with rt.sessions() as s:
        statuses = {e: st for e, st in s.execute(select(Subscriber.email, Enrollment.status).join(Enrollment))}
    assert statuses["done@example.org"] == "completed"  # diff changed nothing
    rt.sessions.kw["bind"].dispose()


def test_a_queued_message_whose_step_moved_still_goes(runtime, smtp, tmp_path):
    """A message queued for week-04 before week-02 was removed (so week-04's position changed) is sent as
    week-04, found by its key; the reader then continues at week-05."""
    from service.dispatch.policy import PassSummary

    readers_at_three_places(runtime)
    d = runtime.dispatcher(max_per_day=0)
    with runtime.sessions() as s:
        due = s.scalar(select(Enrollment.next_due_at).join(Subscriber)
                       .where(Subscriber.email == "mid@example.org"))
    d.queue_due(due, PassSummary())  # week-04 queued, not sent yet

    def remove_week_02(folder: Path) -> None:
        toml = folder / "campaign.toml"
        toml.write_text(re.sub(r'\[\[steps\]\]\nkey = "week-02".*?(?=\n\[\[steps\]\])', "", toml.read_text(),
                               flags=re.S))
    rt = edited(runtime, tmp_path, remove_week_02)
    rt.dispatcher(max_per_day=0).run_pass(due)
    assert got(rt)["mid"][-1] == "week-04"
    with rt.sessions() as s:
        e = s.scalars(select(Enrollment).join(Subscriber).where(Subscriber.email == "mid@example.org")).one()
        assert (e.next_step_key, rt.campaigns[BUNDLE].steps[e.next_step].key) == ("week-05", "week-05")
    rt.sessions.kw["bind"].dispose()


def test_reactivation_check_runs_only_when_a_campaigns_steps_change(runtime, smtp, tmp_path):
    """A worker's start looks for finished readers to reactivate only for a campaign whose steps differ from
    the ones last checked: a restart with the same files checks nothing, an edited file is checked once."""
    from service.enrollment.live_edits import changed_since_checked

    with runtime.sessions() as s, s.begin():
        assert set(changed_since_checked(s, runtime.campaigns, T0)) == set(runtime.campaigns)  # never checked
    with runtime.sessions() as s, s.begin():
        assert changed_since_checked(s, runtime.campaigns, T0) == {}  # the same files again
    rt = edited(runtime, tmp_path, remove_week_04_and_append_week_13)
    with rt.sessions() as s, s.begin():
        assert list(changed_since_checked(s, rt.campaigns, T0)) == [BUNDLE]  # only the edited campaign
    with rt.sessions() as s, s.begin():
        assert changed_since_checked(s, rt.campaigns, T0) == {}
