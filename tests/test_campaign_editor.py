"""Campaigns edited in the console (Flask test client, SQLite and PostgreSQL): a step rewritten in Markdown is
previewed, test-sent and shown with the readers it reaches; publishing makes it the next version, which a
worker built before the publish sends on its next pass; any version can be restored; steps are added,
moved and removed under the same safety rules as file edits."""
from __future__ import annotations

import re
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


def readers_in_four_states(rt) -> None:
    """past@ had week-05 a week ago (week-06 is due today); due@ and snoozed@ are due week-05 today (snoozed@
    has snoozed for two weeks); gone@ was due it too but unsubscribed; new@ is due week-01 today."""
    join(rt, "past@example.org", T0 - timedelta(weeks=6))
    for name in ("due", "snoozed", "gone"):
        join(rt, f"{name}@example.org", T0 - timedelta(weeks=5))
    join(rt, "new@example.org", T0 - timedelta(weeks=1))
    d = rt.dispatcher(max_per_day=0)
    for day in range(6 * 7):  # a pass a day, just after the send hour, up to yesterday
        d.run_pass(PASS - timedelta(weeks=6) + timedelta(days=day))
    with rt.sessions() as s, s.begin():
        people = {p.email.split("@")[0]: p for p in s.scalars(select(Subscriber))}
        snooze(s, people["snoozed"], 2, now=T0)
        unsubscribe(s, UnsubscribeClaim(people["gone"].public_id, BUNDLE), now=T0, method="one-click")


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
    data = {k: (m.group(1) if m else "") for k, m in value.items()}
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
    html = admin.post(f"{EDITOR}/steps/week-05/preview/html", data=data)
    assert html.status_code == 200 and "sandbox" in html.headers["Content-Security-Policy"]
    page = html.data.decode()
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
