"""Campaigns edited in the console (Flask test client, SQLite and PostgreSQL): a step rewritten in Markdown is
previewed, test-sent and shown with the readers it reaches; publishing makes it the next version, which a
worker built before the publish sends on its next pass; any version can be restored; steps are added,
moved and removed under the same safety rules as file edits."""
from __future__ import annotations

import html
import re
import shutil
from datetime import timedelta

import pytest
from conftest import at
from sqlalchemy import func, select
from test_admin_api import PASSWORD, csrf, login, operator  # noqa: F401  (operator is a fixture)

from service.audience.preferences import snooze
from service.audience.signups import ConsentMeta, parse_signup, signup
from service.audience.unsubscribe import unsubscribe
from service.core.models import CampaignDraft, CampaignVersion, Message, Subscriber
from service.core.tokens import UnsubscribeClaim
from service.runtime import build_runtime

BUNDLE = "back-pain-bundle"
T0 = at("2026-06-01T12:00:00")  # a Monday; week-05 of readers who joined 5 weeks ago is due at 09:00 New York
PASS = T0 + timedelta(hours=1, minutes=30)  # 09:30 in New York: the first pass after the send hour
EDITOR = f"/admin/campaign-editor/{BUNDLE}"
HEADING = re.compile(r"<h1\b[^>]*>Your hips, <em\b[^>]*>five</em> weeks in</h1>")  # CSS is inlined into the tags
NEW_BODY = """{{ greeting }}

# Your hips, *five* weeks in

This week is about the [TFL release]({{ resources.tfl_release }}): gentle, slow, once a day.

- Two minutes each side
- Breathe into your belly

{{ m.button(resources.tfl_release, "Watch the TFL release") }}

Talk soon,
Sofia
"""


def join(rt, email: str, when) -> None:
    data = parse_signup({"email": email}, campaigns=rt.campaigns, default_campaign=BUNDLE)
    with rt.sessions() as s, s.begin():
        signup(s, data, campaign=rt.campaigns[BUNDLE], meta=ConsentMeta("json"), now=when)


def readers_in_four_states(rt, today=PASS, dispatcher=None) -> None:
    """As of `today` (a pass just after the send hour): past@ had week-05 a week ago (week-06 is due today);
    due@ and snoozed@ are due week-05 today (snoozed@ has snoozed for two weeks); gone@ was due it too but
    unsubscribed; new@ is due week-01 today."""
    start = today - timedelta(weeks=6)
    join(rt, "past@example.org", start)
    for name in ("due", "snoozed", "gone"):
        join(rt, f"{name}@example.org", start + timedelta(weeks=1))
    join(rt, "new@example.org", start + timedelta(weeks=5))
    d = dispatcher or rt.dispatcher(max_per_day=0)
    for day in range(6 * 7):  # a pass a day, just after the send hour, up to yesterday
        d.run_pass(start + timedelta(days=day))
    with rt.sessions() as s, s.begin():
        people = {p.email.split("@")[0]: p for p in s.scalars(select(Subscriber))}
        snooze(s, people["snoozed"], 2, now=today)
        unsubscribe(s, UnsubscribeClaim(people["gone"].public_id, BUNDLE), now=today, method="one-click")


def sent(rt, after=None) -> dict[str, list[tuple[str, str]]]:
    """(step, subject) each reader was sent, in order (subject as composed: read from the SMTP server)."""
    with rt.sessions() as s:
        q = select(Message.to_email, Message.step_key).where(Message.status == "sent").order_by(Message.id)
        if after is not None:
            q = q.where(Message.id > after)
        rows = s.execute(q).all()
    out: dict[str, list[str]] = {}
    for email, key in rows:
        out.setdefault(email.split("@")[0], []).append(key)
    return out


@pytest.fixture
def admin(client, operator):  # noqa: F811
    assert login(client, operator, PASSWORD).status_code == 302
    return client


def form(client, step: str = "week-05", **changes) -> dict[str, str]:
    page = client.get(f"{EDITOR}/steps/{step}").data.decode()
    value = {name: re.search(rf'name="{name}" value="([^"]*)"', page) for name in ("subject", "preheader", "delay",
                                                                                  "send_hour")}
    data = {k: (html.unescape(m.group(1)) if m else "") for k, m in value.items()}
    data.update(csrf=csrf(client, f"{EDITOR}/steps/{step}"), body_format="markdown", markdown=NEW_BODY)
    data.update(changes)
    return data


def test_week_05_in_markdown_previewed_tested_published_and_sent_by_a_running_worker(runtime, admin, smtp):
    """The coach's edit, end to end: preview (both parts from the Markdown), a test send that records
    nothing, the readers it reaches, publish; a worker that was running before the publish sends the new
    subject and text to due@ on its next pass; past@ gets its week-06 as it was, snoozed@ and gone@ nothing."""
    readers_in_four_states(runtime)
    worker = build_runtime(runtime.settings)  # another process, started before the edit
    before = sent(runtime)
    assert before["past"][-1] == "week-05" and before["due"][-1] == "week-04" and before["new"] == ["welcome"]
    old_subject = runtime.campaigns[BUNDLE].step_by_key("week-05").subject

    data = form(admin, subject="Week 5: your hips, five weeks in", preheader="Two minutes a side")
    frame = admin.post(f"{EDITOR}/steps/week-05/preview/html", data=data)
    assert frame.status_code == 200 and "sandbox" in frame.headers["Content-Security-Policy"]
    page = frame.data.decode()
    assert HEADING.search(page) and "Watch the TFL release" in page
    assert 'href="https://backpainwarriors.example/tfl-release-technique/?utm_source=drip' in page
    text = admin.post(f"{EDITOR}/steps/week-05/preview/text", data=data).data.decode()
    assert "YOUR HIPS, FIVE WEEKS IN" in text and "- Two minutes each side" in text and "<em>" not in text
    assert "Watch the TFL release: https://backpainwarriors.example/tfl-release-technique/" in text

    messages_before = _count(runtime, Message)
    r = admin.post(f"{EDITOR}/steps/week-05/send-test", data={**data, "to": "coach@example.org"})
    assert r.status_code == 200 and "Test sent to coach@example.org" in r.data.decode()
    [test] = smtp.handler.messages(to="coach@example.org")
    assert test["Subject"] == "[TEST] Week 5: your hips, five weeks in" and test["X-Drip-Test"] == "1"
    assert "YOUR HIPS, FIVE WEEKS IN" in test.get_body(("plain",)).get_content()
    assert _count(runtime, Message) == messages_before  # a test is never in the log
    assert _count(runtime, CampaignDraft) == 0  # nor in the draft: nothing was saved

    assert admin.post(f"{EDITOR}/steps/week-05", data=data).status_code == 303
    overview = admin.get(EDITOR).data.decode()
    row = re.search(r"<tr><td>week-05</td><td>([^<]*)</td>\s*<td>(\d+)</td><td>(\d+)</td>", overview)
    # due@, snoozed@ (when the snooze ends) and new@ will get it; it is next for due@ and snoozed@
    assert row and row.groups() == ("subject, preheader, body", "3", "2")
    assert worker.campaigns[BUNDLE].step_by_key("week-05").subject == old_subject  # a draft sends nothing

    mark = _max_id(runtime)
    r = admin.post(f"{EDITOR}/publish", data={"csrf": csrf(admin, EDITOR)})
    assert r.status_code == 303
    assert "Published version 2" in admin.get(EDITOR).data.decode()
    with runtime.sessions() as s:
        rows = s.execute(select(CampaignVersion.version, CampaignVersion.source, CampaignVersion.published_by)
                         .order_by(CampaignVersion.version)).all()
    assert rows == [(1, "files", "email_templates"), (2, "console", "ops@example.org")]

    worker.dispatcher(max_per_day=0).run_pass(PASS)  # its next pass, no restart
    assert sent(worker, after=mark) == {"due": ["week-05"], "past": ["week-06"], "new": ["week-01"]}
    [week5] = [m for m in smtp.handler.messages(to="due@example.org") if "five weeks in" in m["Subject"]]
    assert week5["Subject"] == "Week 5: your hips, five weeks in"
    assert "YOUR HIPS, FIVE WEEKS IN" in week5.get_body(("plain",)).get_content()
    assert HEADING.search(week5.get_body(("html",)).get_content())
    assert not any("five weeks in" in m["Subject"] for m in smtp.handler.messages(to="past@example.org"))
    worker.sessions.kw["bind"].dispose()


def _max_id(rt) -> int:
    with rt.sessions() as s:
        return s.scalar(select(func.max(Message.id))) or 0


def _count(rt, model) -> int:
    with rt.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_any_version_can_be_restored_and_is_sent_again(runtime, admin):
    """Version 2 changes week-05's subject; restoring version 1 puts its files in the draft, shows what that
    changes back, and publishing it makes version 3 with version 1's files: the old subject is sent again."""
    old = runtime.campaigns[BUNDLE].step_by_key("week-05").subject
    admin.post(f"{EDITOR}/steps/week-05", data=form(admin, subject="A new week five"))
    admin.post(f"{EDITOR}/publish", data={"csrf": csrf(admin, EDITOR)})
    assert runtime.campaigns[BUNDLE].step_by_key("week-05").subject == "A new week five"
    assert runtime.campaigns[BUNDLE].version == 2

    r = admin.post(f"{EDITOR}/versions/1/restore", data={"csrf": csrf(admin, EDITOR)})
    assert r.status_code == 303
    page = admin.get(EDITOR).data.decode()
    assert "Version 1 is in the draft" in page and "restores version 1" in page
    assert re.search(r"<tr><td>week-05</td><td>subject, body</td>", page)  # back to the hand-written pair
    admin.post(f"{EDITOR}/publish", data={"csrf": csrf(admin, EDITOR)})
    with runtime.sessions() as s:
        rows = {v.version: v for v in s.scalars(select(CampaignVersion))}
    assert rows[3].digest == rows[1].digest and rows[3].source == "restore" and rows[3].note == "restores version 1"
    assert runtime.campaigns[BUNDLE].step_by_key("week-05").subject == old
    assert runtime.campaigns[BUNDLE].version == 3


def test_steps_are_added_moved_and_removed_under_the_file_edit_rules(runtime, admin):
    """A new step may not reuse a key sent before (readers who had it would skip the new one); week-01 cannot
    be removed while the lead magnets continue into it; moving and removing show up as changes with the
    readers they reach, and the draft keeps the campaign valid at every step."""
    readers_in_four_states(runtime)
    token = csrf(admin, EDITOR)
    r = admin.post(f"{EDITOR}/steps", data={"csrf": token, "key": "week-03", "subject": "Again", "delay": "7d"})
    assert r.status_code == 303 and "already has a step" in admin.get(EDITOR).data.decode()
    r = admin.post(f"{EDITOR}/steps/week-01/remove", data={"csrf": token})
    page = admin.get(EDITOR).data.decode()
    # plateau-14 continues into week-01 and the download-only lead magnets invite readers to it
    assert "Not changed" in page and re.search(r"(continue_at|invite_at) (&#39;|')week-01(&#39;|') is not a step", page)
    assert _count(runtime, CampaignDraft) == 0

    r = admin.post(f"{EDITOR}/steps", data={"csrf": token, "key": "week-13", "subject": "Thirteen weeks in",
                                             "delay": "1w"})
    assert r.status_code == 303 and r.headers["Location"].endswith(f"{EDITOR}/steps/week-13")
    admin.post(f"{EDITOR}/steps/week-07/move", data={"csrf": token, "to": "up"})
    admin.post(f"{EDITOR}/steps/week-04/remove", data={"csrf": token})
    page = admin.get(EDITOR).data.decode()
    keys = re.findall(r'/steps/(week-\d\d|welcome)">', page)
    assert keys[:8] == ["welcome", "week-01", "week-02", "week-03", "week-05", "week-07", "week-06", "week-08"]
    assert keys[-1] == "week-13"
    changes = dict(re.findall(r"<tr><td>(week-\d\d)</td><td>([^<]*)</td>", page))
    assert changes == {"week-07": "moved", "week-06": "moved", "week-13": "added", "week-04": "removed"}
    # past@ completed nothing yet; every active reader will get week-13; week-04 was next for nobody now
    assert re.search(r"<td>week-13</td><td>added</td>\s*<td>4</td>", page)

    # Publish; a step that was sent and then removed cannot come back under its old key.
    admin.post(f"{EDITOR}/publish", data={"csrf": token})
    r = admin.post(f"{EDITOR}/steps", data={"csrf": token, "key": "week-04", "subject": "Back", "delay": "7d"})
    assert "was sent before in this campaign" in admin.get(EDITOR).data.decode()
    assert runtime.campaigns[BUNDLE].step_by_key("week-04") is None


def test_bad_input_is_refused_with_the_field_and_nothing_saved(runtime, admin):
    """An empty subject, a bad delay or send hour: 422 naming the problem, no draft; a body that does not
    render shows why in the preview frame; a publish made by someone else meanwhile refuses the old draft."""
    url = f"{EDITOR}/steps/week-05"
    for change, words in (({"subject": "  "}, "Subject:</strong> the subject is empty"),
                          ({"delay": "soon"}, "Delay:</strong> bad delay 'soon'"),
                          ({"send_hour": "25"}, "Send hour:</strong> the send hour is a whole hour 0-23")):
        r = admin.post(url, data=form(admin, **change))
        assert r.status_code == 422 and words in html.unescape(r.data.decode()), change
    assert _count(runtime, CampaignDraft) == 0
    r = admin.post(f"{url}/preview/html", data=form(admin, markdown="Hi {{ nme }}"))
    assert r.status_code == 422 and "does not render" in r.data.decode() and "nme" in r.data.decode()
    # a body may not reach Python's internals: templates run sandboxed
    r = admin.post(f"{url}/preview/html", data=form(admin, markdown="{{ ''.__class__.__mro__[1].__subclasses__() }}"))
    assert r.status_code == 422 and "SecurityError" in r.data.decode() and "subprocess" not in r.data.decode()
    r = admin.post(f"{url}/send-test", data={**form(admin), "to": "not an address"})
    assert r.status_code == 422 and "test address" in r.data.decode()
    r = admin.post(f"{url}/send-test", data={**form(admin, markdown="Hi {{ nme }}"), "to": "coach@example.org"})
    assert r.status_code == 422 and "does not render" in r.data.decode()

    unchanged = {**form(admin), "body_format": "html"}  # the form as the page shows it: nothing changed
    week5 = runtime.campaigns[BUNDLE]
    unchanged.update(html=week5.read("week-05.html"), text=week5.read("week-05.txt"))
    admin.post(url, data=unchanged)
    admin.post(f"{EDITOR}/publish", data={"csrf": csrf(admin, EDITOR)})
    assert "the draft is the same as what is sent now" in html.unescape(admin.get(EDITOR).data.decode())
    assert _count(runtime, CampaignVersion) == 0

    admin.post(url, data=form(admin, subject="Mine"))
    with runtime.sessions() as s, s.begin():  # meanwhile another operator published a version
        from service.campaigns import versions
        from service.operator.campaign_editor import published_files
        files = published_files(runtime.campaigns[BUNDLE])
        versions.publish(s, BUNDLE, files, by="other@example.org", source="console", now=T0)
    admin.post(f"{EDITOR}/publish", data={"csrf": csrf(admin, EDITOR)})
    page = admin.get(EDITOR).data.decode()
    assert "Not published" in page and "other@example.org" in page


def test_the_campaign_page_links_each_step_preview_and_editor(runtime, admin):
    """The campaign page links every step's preview (which renders) and its editor."""
    page = admin.get(f"/admin/campaigns/{BUNDLE}").data.decode()
    for step in runtime.campaigns[BUNDLE].steps:
        assert f'href="/admin/campaigns/{BUNDLE}/{step.key}"' in page
        assert f'href="{EDITOR}/steps/{step.key}"' in page
    assert admin.get(f"/admin/campaigns/{BUNDLE}/week-05").status_code == 200
    assert f'href="{EDITOR}"' in page


def test_check_content_lints_the_step_and_scores_it_with_spamassassin(runtime, admin):
    """**Check content** lints the step as typed (a shortener link is an error) and shows SpamAssassin's
    score where it is installed, else says it is not."""
    r = admin.post(f"{EDITOR}/steps/week-05/check",
                   data=form(admin, markdown="{{ greeting }}\n\nRead [this](https://bit.ly/abc).\n"))
    page = html.unescape(r.data.decode())
    assert r.status_code == 200 and "link to the URL shortener bit.ly" in page
    if shutil.which("spamassassin"):
        assert re.search(r"SpamAssassin: <strong>-?\d+(\.\d+)?</strong> points \(5\.0 is spam\)", page)
    else:
        assert "SpamAssassin: not installed" in page
    assert _count(runtime, CampaignDraft) == 0
