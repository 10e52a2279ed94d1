"""The operator console through the Flask test client on SQLite and PostgreSQL: guards, escaping, the
send log's date filter and CSV export, the email as sent, subscriber actions, pause/resume, the outbox viewer."""
from __future__ import annotations

import csv
import html
import io
import re
from dataclasses import replace
from datetime import timedelta

import pytest
from conftest import at
from sqlalchemy import func, select
from test_admin_api import PASSWORD, csrf, login, operator, seed  # noqa: F401  (operator is a fixture)

from service.app import create_app
from service.core.models import CampaignState, Consent, Enrollment, Event, Message, Subscriber, Suppression
from service.dispatch.policy import PassSummary
from service.enrollment.suppression import email_hash
from service.runtime import build_runtime

T0 = at("2026-02-02T09:00:00")
CAMPAIGN = "back-pain-bundle"
EVIL = "<script>alert(1)</script>"


@pytest.fixture
def admin(client, operator):  # noqa: F811
    assert login(client, operator, PASSWORD).status_code == 302
    return client


def token(client, path: str = "/admin/messages") -> str:
    return csrf(client, path)


def subscriber_id(runtime, address: str) -> int:
    with runtime.sessions() as s:
        return s.scalar(select(Subscriber.id).where(Subscriber.email_key == address))


def _fill(rule) -> str:
    values = {"message_id": 1, "subscriber_id": 1, "key": CAMPAIGN, "name": "x.eml", "filename": "drip.css",
              "campaign_key": CAMPAIGN, "step_key": "welcome", "part": "html", "version": 1,
              "user_id": 1, "token_id": 1}
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), rule.rule)


def test_every_admin_route_refuses_an_anonymous_user(app, client, operator):  # noqa: F811
    """Walk app.url_map: every /admin route but the login page sends an anonymous GET to the login page and
    refuses an anonymous POST, even one carrying a valid CSRF token of the anonymous session."""
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith("/admin") and r.endpoint != "admin.login"]
    assert len(rules) >= 15
    anonymous_csrf = csrf(client)  # the login page gives an anonymous session a token
    for rule in rules:
        path = _fill(rule)
        if "GET" in rule.methods:
            r = client.get(path)
            assert r.status_code == 302 and "/admin/login" in r.headers["Location"], path
        if "POST" in rule.methods:
            r = client.post(path, data={"csrf": anonymous_csrf, "reason": "x", "confirm": "yes"})
            assert r.status_code == 302 and "/admin/login" in r.headers["Location"], path


def test_admin_posts_without_csrf_are_refused(app, admin, runtime):
    """Logged in, every admin POST route (but login) refuses a form without its CSRF token, and nothing changes."""
    seed(runtime, "keep@example.org")
    posts = [r for r in app.url_map.iter_rules() if r.rule.startswith("/admin") and "POST" in r.methods
             and r.endpoint != "admin.login"]
    assert {r.endpoint for r in posts} >= {"admin.subscriber_unsubscribe", "admin.subscriber_erase",
                                           "admin.campaign_pause", "admin.message_retry", "admin.logout"}
    for rule in posts:
        assert admin.post(_fill(rule), data={"reason": "x", "confirm": "yes"}).status_code == 400, rule.rule
        assert admin.post(_fill(rule), data={"csrf": "forged", "confirm": "yes"}).status_code == 400, rule.rule
    with runtime.sessions() as s:
        assert s.scalar(select(Subscriber.status)) == "active"
        assert s.scalar(select(func.count()).select_from(CampaignState)) == 0


def test_a_script_name_is_escaped_on_every_page(admin, runtime):
    """A reader named <script>... shows as text on the send log, message, subscriber list and subscriber pages."""
    from service.audience.signups import ConsentMeta, parse_signup, signup

    data = parse_signup({"email": "evil@example.org", "name": EVIL}, campaigns=runtime.campaigns,
                        default_campaign=CAMPAIGN)
    with runtime.sessions() as s, s.begin():
        signup(s, data, campaign=runtime.campaigns[CAMPAIGN], meta=ConsentMeta("json", source_url=EVIL), now=T0)
    runtime.dispatcher().run_pass(T0)
    sid = subscriber_id(runtime, "evil@example.org")
    with runtime.sessions() as s:
        mid = s.scalar(select(Message.id))
    pages = ["/admin/messages", f"/admin/messages/{mid}", "/admin/subscribers?q=evil", f"/admin/subscribers/{sid}"]
    shown = 0
    for path in pages:
        html = admin.get(path).data.decode()
        assert "<script>alert" not in html, path
        shown += "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert shown >= 3  # the message, subscriber list and subscriber pages show the name
    body = admin.get(f"/admin/messages/{mid}/html")
    assert "sandbox" in body.headers["Content-Security-Policy"]


def test_message_page_shows_the_email_as_sent(admin, runtime, smtp):
    """The message page shows the headers and text that reached the SMTP server; the HTML is in a sandboxed frame
    whose own response forbids scripts."""
    seed(runtime, "reader@example.org")
    runtime.dispatcher().run_pass(T0)
    received = smtp.handler.messages(to="reader@example.org")[0]
    with runtime.sessions() as s:
        mid = s.scalar(select(Message.id))
    page = admin.get(f"/admin/messages/{mid}").data.decode()
    assert html.escape(received["Message-ID"]) in page and "List-Unsubscribe-Post" in page
    assert re.search(rf'<iframe[^>]+sandbox=""[^>]+src="/admin/messages/{mid}/html"', page)
    text = received.get_body(preferencelist=("plain",)).get_content()
    assert html.escape(text.splitlines()[0].strip(), quote=False) in page
    frame = admin.get(f"/admin/messages/{mid}/html")
    assert frame.status_code == 200 and frame.mimetype == "text/html"
    csp = frame.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox;") and "script-src" not in csp and "default-src 'none'" in csp
    assert frame.data.decode() == received.get_body(preferencelist=("html",)).get_content()


def test_date_range_filter_and_csv_export(admin, runtime):
    """since/until narrow the log to whole UTC days, the form keeps them, and the CSV holds every filtered row."""
    seed(runtime, "early@example.org")
    runtime.dispatcher().run_pass(T0)
    with runtime.sessions() as s, s.begin():
        s.execute(Enrollment.__table__.update().values(next_due_at=None))
    from service.audience.signups import ConsentMeta, parse_signup, signup

    later = T0 + timedelta(days=3)
    data = parse_signup({"email": "=cmd@example.org"}, campaigns=runtime.campaigns, default_campaign=CAMPAIGN)
    with runtime.sessions() as s, s.begin():
        signup(s, data, campaign=runtime.campaigns[CAMPAIGN], meta=ConsentMeta("json"), now=later)
    runtime.dispatcher().run_pass(later)
    page = admin.get("/admin/messages?since=2026-02-04&until=2026-02-05").data.decode()
    assert "=cmd@example.org" in page and "early@example.org" not in page
    assert 'value="2026-02-04"' in page and 'value="2026-02-05"' in page
    page = admin.get("/admin/messages?until=2026-02-02").data.decode()  # through that day, inclusive
    assert "early@example.org" in page and "=cmd@example.org" not in page
    r = admin.get("/admin/messages.csv?status=sent")
    assert r.status_code == 200 and r.mimetype == "text/csv" and "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.data.decode())))
    assert sorted(row["to"] for row in rows) == ["'=cmd@example.org", "early@example.org"]  # no formula injection
    assert {row["status"] for row in rows} == {"sent"}
    one = list(csv.DictReader(io.StringIO(admin.get("/admin/messages.csv?since=2026-02-04").data.decode())))
    assert [row["to"] for row in one] == ["'=cmd@example.org"]


def test_subscriber_page_and_actions_write_events(admin, runtime, smtp):
    """The subscriber page shows consent, enrollment and timeline; unsubscribe, resubscribe (reason required) and
    each action lands in the timeline as an event."""
    seed(runtime, "ann@example.org")
    runtime.dispatcher().run_pass(T0)
    sid = subscriber_id(runtime, "ann@example.org")
    page = admin.get(f"/admin/subscribers/{sid}").data.decode()
    campaign = runtime.campaigns[CAMPAIGN]
    assert campaign.consent[:30] in page.replace("&#39;", "'")
    assert campaign.steps[1].key in page  # the next due step
    for word in ("signup", "queued", "attempt", "sent"):
        assert f"status-{word}" in page
    tok = token(admin, f"/admin/subscribers/{sid}")
    r = admin.post(f"/admin/subscribers/{sid}/unsubscribe", data={"csrf": tok})
    assert r.status_code == 303
    r = admin.post(f"/admin/subscribers/{sid}/resubscribe", data={"csrf": tok, "reason": "   "},
                   follow_redirects=True)
    assert "say why" in r.data.decode()
    with runtime.sessions() as s:
        assert s.get(Subscriber, sid).status == "unsubscribed"
    admin.post(f"/admin/subscribers/{sid}/resubscribe", data={"csrf": tok, "reason": "asked by phone on 2 Feb"})
    with runtime.sessions() as s:
        person = s.get(Subscriber, sid)
        enrollment = s.scalar(select(Enrollment))
        types = [e.type for e in s.scalars(select(Event).where(Event.subscriber_id == sid).order_by(Event.id))]
        reason = s.scalar(select(Event.detail).where(Event.type == "resubscribed"))
    assert person.status == "active" and enrollment.status == "active" and enrollment.next_due_at is not None
    assert types[-2:] == ["unsubscribed", "resubscribed"] and "asked by phone" in reason
    assert "operator" not in types


def test_retry_moves_a_failed_message_back_to_the_queue(admin, runtime, smtp):
    """A message refused by policy (5.7.x, failed) is retried by the operator: failed -> queued, then sent."""
    smtp.handler.script("pol@example.org", "RCPT", "550 5.7.1 policy refusal")
    seed(runtime, "pol@example.org")
    runtime.dispatcher().run_pass(T0)
    with runtime.sessions() as s:
        m = s.scalar(select(Message))
    assert m.status == "failed"
    page = admin.get(f"/admin/messages/{m.id}").data.decode()
    assert "Retry this message" in page
    r = admin.post(f"/admin/messages/{m.id}/retry", data={"csrf": token(admin, f"/admin/messages/{m.id}")})
    assert r.status_code == 303
    with runtime.sessions() as s:
        again = s.get(Message, m.id)
        detail = s.scalar(select(Event.detail).where(Event.message_id == m.id, Event.type == "queued",
                                                     Event.detail.like("retry by%")))
    assert again.status == "queued" and again.attempts == 0 and "ops@example.org" in detail
    runtime.dispatcher().run_pass()  # the retry is due at the real now
    with runtime.sessions() as s:
        assert s.get(Message, m.id).status == "sent"
    welcome = runtime.campaigns[CAMPAIGN].steps[0].subject
    assert [x["Subject"] for x in smtp.handler.messages(to="pol@example.org")].count(welcome) == 1
    r = admin.post(f"/admin/messages/{m.id}/retry", data={"csrf": token(admin)}, follow_redirects=True)
    assert "only a failed message" in r.data.decode()


def test_erase_keeps_only_the_hash(admin, runtime, smtp):
    """Erasing from the page deletes every row of the person; the address's SHA-256 stays suppressed; signing up
    again is ignored."""
    seed(runtime, "gone@example.org", "stay@example.org")
    runtime.dispatcher().run_pass(T0)
    sid = subscriber_id(runtime, "gone@example.org")
    tok = token(admin, f"/admin/subscribers/{sid}")
    r = admin.post(f"/admin/subscribers/{sid}/erase", data={"csrf": tok})  # the box not ticked
    assert r.status_code == 303 and subscriber_id(runtime, "gone@example.org") == sid
    admin.post(f"/admin/subscribers/{sid}/erase", data={"csrf": tok, "confirm": "yes"})
    with runtime.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 1
        for model, column in ((Consent, Consent.subscriber_id), (Enrollment, Enrollment.subscriber_id),
                              (Message, Message.subscriber_id), (Event, Event.subscriber_id)):
            assert s.scalar(select(func.count()).select_from(model).where(column == sid)) == 0
        assert s.scalar(select(func.count()).select_from(Message).where(Message.to_email.like("gone%"))) == 0
        supp = s.scalar(select(Suppression).where(Suppression.email_hash == email_hash("gone@example.org")))
        erased = s.scalar(select(Event).where(Event.type == "erased"))
    assert supp is not None and supp.reason == "erased"
    assert erased.subscriber_id is None and "gone@" not in (erased.detail or "")
    assert admin.get(f"/admin/subscribers/{sid}").status_code == 404
    seed(runtime, "gone@example.org")
    assert subscriber_id(runtime, "gone@example.org") is None


def test_pause_holds_queue_and_claim_and_resume_sends_one_each(admin, runtime, smtp):
    """Paused: no step is queued and no queued message is claimed. Resumed: the held welcome goes out, one email
    per reader, and the next step keeps its weekly delay."""
    seed(runtime, "p1@example.org", "p2@example.org")
    runtime.dispatcher().queue_due(T0, PassSummary())
    tok = token(admin, f"/admin/campaigns/{CAMPAIGN}")
    assert admin.post(f"/admin/campaigns/{CAMPAIGN}/pause", data={"csrf": tok}).status_code == 303
    assert "Resume campaign" in admin.get(f"/admin/campaigns/{CAMPAIGN}").data.decode()
    seed(runtime, "p3@example.org")  # signs up while paused
    summary = runtime.dispatcher().run_pass(T0 + timedelta(days=20))
    assert summary.queued == 0 and summary.sent == 0 and smtp.handler.accepted == []
    with runtime.sessions() as s:
        statuses = sorted(s.scalars(select(Message.status)))
        due = s.scalar(select(Enrollment.next_due_at).join(Subscriber).where(Subscriber.email_key == "p3@example.org"))
    assert statuses == ["queued", "queued"] and due == T0
    admin.post(f"/admin/campaigns/{CAMPAIGN}/resume", data={"csrf": tok})
    later = T0 + timedelta(days=20)
    summary = runtime.dispatcher().run_pass(later)
    assert summary.sent == 3
    per_reader = [len(smtp.handler.messages(to=f"p{i}@example.org")) for i in (1, 2, 3)]
    assert per_reader == [1, 1, 1]
    with runtime.sessions() as s:
        nexts = set(s.scalars(select(Enrollment.next_due_at)))
    assert all(n > later + timedelta(days=5) for n in nexts)  # week 1 is a week after the welcome went out
    assert runtime.dispatcher().run_pass(later + timedelta(minutes=5)).sent == 0


def test_campaign_page_has_counts_and_svg_charts(admin, runtime, smtp):
    """The campaign page counts per step and draws emails per day and the funnel as inline SVG with titles."""
    smtp.handler.script("b@example.org", "RCPT", "550 5.1.1 unknown user")
    seed(runtime, "a@example.org", "b@example.org")
    runtime.dispatcher().run_pass()
    page = admin.get(f"/admin/campaigns/{CAMPAIGN}").data.decode()
    assert page.count("<svg") == 2 and 'role="img"' in page
    assert re.search(r"<title>\d{4}-\d\d-\d\d: 1</title>", page)  # today's bar: one sent
    assert "<title>enrolled: 2</title>" in page
    welcome = runtime.campaigns[CAMPAIGN].steps[0].key
    row = re.search(rf"1\. {welcome}</a>.*?</tr>", page, re.S).group(0)
    assert [int(n) for n in re.findall(r"<td>(\d+)</td>", row)] == [0, 1, 0, 1, 0, 0, 0, 0]
    listing = admin.get("/admin/campaigns").data.decode()
    assert runtime.campaigns[CAMPAIGN].title in listing.replace("&#39;", "'")
    assert admin.get("/admin/campaigns/nope").status_code == 404


def test_outbox_viewer_lists_and_shows_files_and_refuses_traversal(runtime, operator, tmp_path):  # noqa: F811
    """With the file transport, /admin/outbox lists the .eml files newest first and shows one; any other path is a
    404; with SMTP the viewer does not exist."""
    outbox = tmp_path / "outbox"
    rt = build_runtime(replace(runtime.settings, email_url=f"file://{outbox}"))
    seed(rt, "o1@example.org")
    rt.dispatcher().run_pass(T0)
    (tmp_path / "secret.eml").write_text("Subject: secret\n\nnot for you")
    app = create_app(runtime=rt)
    client = app.test_client()
    login(client, operator, PASSWORD)
    listing = client.get("/admin/outbox").data.decode()
    names = re.findall(r'href="/admin/outbox/([^"/]+\.eml)"', listing)
    assert len(names) == 1 and "o1@example.org" in listing
    shown = client.get(f"/admin/outbox/{names[0]}").data.decode()
    assert "List-Unsubscribe" in shown and f'src="/admin/outbox/{names[0]}/html"' in shown
    assert "sandbox" in client.get(f"/admin/outbox/{names[0]}/html").headers["Content-Security-Policy"]
    for bad in ("..%2Fsecret.eml", "%2E%2E%2Fsecret.eml", "..", ".hidden.eml", "secret.eml"):
        assert client.get(f"/admin/outbox/{bad}").status_code == 404, bad
    rt.sessions.kw["bind"].dispose()
    smtp_client = create_app(runtime=runtime).test_client()
    login(smtp_client, operator, PASSWORD)
    assert smtp_client.get("/admin/outbox").status_code == 404


def test_metrics_add_signups_queue_depth_and_pass_duration(client, runtime):
    """/metrics reports signups per campaign, queue depth and the duration of passes recorded by any worker."""
    seed(runtime, "m1@example.org", "m2@example.org")
    runtime.dispatcher().queue_due(T0, PassSummary())
    text = client.get("/metrics").data.decode()
    assert f'drip_signups{{campaign="{CAMPAIGN}"}} 2.0' in text
    assert 'drip_queue_depth{state="ready"} 2.0' in text
    assert "drip_passes_last_hour 0.0" in text
    runtime.dispatcher().run_pass(T0)
    text = client.get("/metrics").data.decode()
    assert 'drip_queue_depth{state="ready"} 0.0' in text and "drip_passes_last_hour 1.0" in text
    duration = float(re.search(r"^drip_last_pass_duration_seconds (\S+)$", text, re.M).group(1))
    assert 0 < duration < 30


def test_a_sending_pause_is_shown_on_every_console_page_until_resumed(runtime, admin) -> None:
    from service.core.db import utcnow
    from service.dispatch import sending_pause as sending

    assert "Sending is paused" not in admin.get("/admin/messages").data.decode()
    with runtime.sessions() as s, s.begin():
        sending.pause(s, "SMTP authentication failed: 535", now=utcnow())
    for path in ("/admin/messages", "/admin/subscribers", "/admin/campaigns"):
        page = admin.get(path).data.decode()
        assert "Sending is paused" in page and "SMTP authentication failed: 535" in page, path
    with runtime.sessions() as s, s.begin():
        sending.resume(s, now=utcnow())
    assert "Sending is paused" not in admin.get("/admin/messages").data.decode()
