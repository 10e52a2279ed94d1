"""Dispatch over real SMTP: the welcome and its headers, the weekly schedule, retries, bounces, suppression.

Time is controlled by passing `now` to a pass (what `drip tick --now` does), never by sleeping.
"""
from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from conftest import at
from sqlalchemy import func, select

from service.models import Enrollment, Event, Message, Subscriber
from service.signups import ConsentMeta, parse_signup, signup
from service.suppression import is_suppressed
from service.tokens import UnsubscribeClaim
from service.unsubscribe import unsubscribe

T0 = at("2026-03-02T15:00:00")  # a Monday; US daylight saving starts on Sunday 2026-03-08


def enroll(rt, email: str, *, name: str = "", tz: str | None = None, now=T0) -> int:  # noqa: ANN001
    data = parse_signup({"email": email, "name": name, "timezone": tz}, campaigns=rt.campaigns,
                        default_campaign=rt.settings.default_campaign)
    with rt.sessions() as s, s.begin():
        result = signup(s, data, campaign=rt.campaigns[data.campaign], meta=ConsentMeta("json"), now=now)
    return result.subscriber_id


def message_rows(rt) -> list[Message]:  # noqa: ANN001
    with rt.sessions() as s:
        return list(s.scalars(select(Message).order_by(Message.id)))


def steps(rt):  # noqa: ANN001, ANN201
    return rt.campaigns["back-pain-bundle"].steps


def test_welcome_goes_out_over_smtp_with_every_header(runtime, smtp):  # noqa: ANN001
    """The first pass after a signup sends the welcome, with the headers and footer every email needs."""
    enroll(runtime, "Ada@Example.com", name="Ada Lovelace")
    summary = runtime.dispatcher().run_pass(T0)
    assert (summary.queued, summary.sent) == (1, 1)
    [msg] = smtp.handler.messages(to="Ada@example.com")
    welcome = steps(runtime)[0]
    assert msg["Subject"] == welcome.subject
    assert msg["From"] == runtime.campaigns["back-pain-bundle"].from_address
    [to] = msg["To"].addresses
    assert (to.addr_spec, to.display_name) == ("Ada@example.com", "Ada Lovelace")
    assert msg["Date"] and msg["Message-ID"].endswith("@backpainwarriors.example>")
    unsub = str(msg["List-Unsubscribe"])
    urls = [u.strip(" <>") for u in unsub.split(",")]
    assert urls[0].startswith("https://drip.example.org/unsubscribe/") and urls[1].startswith("mailto:")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "List-Id" in msg and "Precedence" not in msg
    text, html = msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()
    for part in (text, html):
        assert "Back Pain Warriors, 12 Test Street, Springfield" in part
        assert urls[0] in part
        assert "You're getting this email because" in part.replace("&#39;", "'").replace("&#x27;", "'")
    assert "Hi Ada," in text
    assert 'style="' in html and "@media" in html  # CSS inlined, media queries kept
    for url in runtime.campaigns["back-pain-bundle"].resources.values():
        if url in text:
            assert url in html
    [row] = message_rows(runtime)
    assert (row.status, row.attempts, row.message_id, row.subject) == ("sent", 1, msg["Message-ID"], welcome.subject)
    with runtime.sessions() as s:
        kinds = s.scalars(select(Event.type).where(Event.message_id == row.id).order_by(Event.id)).all()
    assert kinds == ["queued", "attempt", "sent"]


def test_weekly_emails_follow_the_send_hour_across_daylight_saving(runtime, smtp):  # noqa: ANN001
    """Each weekly step is due 7 local days after the previous send, at 09:00 in the reader's zone, DST or not."""
    enroll(runtime, "w@example.org", tz="America/New_York")
    d = runtime.dispatcher()
    assert d.run_pass(T0).sent == 1
    ny = ZoneInfo("America/New_York")
    now = T0
    for step in steps(runtime)[1:]:
        with runtime.sessions() as s:
            due = s.scalars(select(Enrollment.next_due_at)).one()
        local = due.astimezone(ny)
        assert (local.hour, local.minute, local.weekday()) == (9, 0, 0), step.key  # Mondays, 09:00 local
        assert (due - now) <= timedelta(days=7) and (due - now) > timedelta(days=6)
        assert d.run_pass(due - timedelta(minutes=1)).sent == 0
        assert d.run_pass(due).sent == 1
        now = due
    got = [m["Subject"] for m in smtp.handler.messages(to="w@example.org")]
    assert got == [s.subject for s in steps(runtime)]
    with runtime.sessions() as s:
        enrollment = s.scalars(select(Enrollment)).one()
    assert enrollment.status == "completed" and enrollment.next_due_at is None
    assert d.run_pass(now + timedelta(days=60)).sent == 0


def test_a_late_service_catches_up_one_email_per_pass(runtime, smtp):  # noqa: ANN001
    """After weeks of downtime a pass sends late instead of skipping, and never more than one email per reader."""
    enroll(runtime, "late@example.org")
    d = runtime.dispatcher()
    d.run_pass(T0)
    later = T0 + timedelta(days=60)
    assert d.run_pass(later).sent == 1
    assert d.run_pass(later + timedelta(minutes=5)).sent == 0  # next step: 7 days after this late send
    assert [m["Subject"] for m in smtp.handler.messages()] == [s.subject for s in steps(runtime)[:2]]


def test_451_then_250_retries_with_backoff(runtime, smtp):  # noqa: ANN001
    """A 4xx reply defers the message with backoff; the retry succeeds and the reader gets one email."""
    smtp.handler.script("retry@example.org", "DATA", "451 4.3.0 Try again later")
    enroll(runtime, "retry@example.org")
    d = runtime.dispatcher()
    assert d.run_pass(T0).deferred == 1
    [row] = message_rows(runtime)
    assert row.status == "deferred" and row.attempts == 1 and "451" in row.last_error
    assert T0 + timedelta(seconds=48) <= row.next_attempt_at <= T0 + timedelta(seconds=72)
    assert d.run_pass(T0 + timedelta(seconds=30)).sent == 0
    assert d.run_pass(T0 + timedelta(minutes=2)).sent == 1
    [row] = message_rows(runtime)
    assert (row.status, row.attempts) == ("sent", 2)
    assert len(smtp.handler.messages(to="retry@example.org")) == 1
    with runtime.sessions() as s:
        assert s.scalars(select(Subscriber.status)).one() == "active"


def test_550_bounces_suppresses_and_never_retries(runtime, smtp, client):  # noqa: ANN001
    """A 5xx refusal marks the message bounced, suppresses the address and stops the enrollment for good."""
    smtp.handler.script("nobody@example.org", "RCPT", "550 5.1.1 No such user")
    enroll(runtime, "nobody@example.org")
    d = runtime.dispatcher()
    assert d.run_pass(T0).bounced == 1
    [row] = message_rows(runtime)
    assert row.status == "bounced" and "550 5.1.1" in row.last_error
    with runtime.sessions() as s:
        assert s.scalars(select(Subscriber.status)).one() == "bounced"
        assert s.scalars(select(Enrollment.status)).one() == "stopped"
        assert is_suppressed(s, "nobody@example.org")
    assert d.run_pass(T0 + timedelta(days=30)).sent == 0
    r = client.post("/signup", json={"email": "NoBody@example.org"})
    assert r.status_code == 200 and r.get_json()["status"] == "not_subscribed"
    assert smtp.handler.messages() == []


def test_policy_refusal_fails_the_message_without_suppressing(runtime, smtp):  # noqa: ANN001
    """A 5.7.x policy refusal fails that email but says nothing about the mailbox: no suppression."""
    smtp.handler.script("policy@example.org", "DATA", "554 5.7.1 Message rejected by policy")
    enroll(runtime, "policy@example.org")
    assert runtime.dispatcher().run_pass(T0).failed == 1
    with runtime.sessions() as s:
        assert not is_suppressed(s, "policy@example.org")
        enrollment = s.scalars(select(Enrollment)).one()
    assert enrollment.status == "active" and enrollment.next_step == 1 and enrollment.next_due_at is not None


def test_smtp_down_then_back(runtime, smtp):  # noqa: ANN001
    """While the SMTP server is down messages wait with backoff; once it is back each is sent once."""
    enroll(runtime, "a@example.org")
    enroll(runtime, "b@example.org")
    smtp.stop()
    d = runtime.dispatcher()
    assert d.run_pass(T0).deferred == 2
    rows = message_rows(runtime)
    assert all(r.status == "deferred" and "cannot connect" in r.last_error for r in rows)
    assert d.run_pass(T0 + timedelta(minutes=3)).deferred == 2
    assert {r.attempts for r in message_rows(runtime)} == {2}
    smtp.start()
    assert d.run_pass(T0 + timedelta(minutes=30)).sent == 2
    assert sorted(m["To"].addresses[0].addr_spec for m in smtp.handler.messages()) == ["a@example.org", "b@example.org"]
    with runtime.sessions() as s:
        assert set(s.scalars(select(Subscriber.status))) == {"active"}


def test_persistent_4xx_gives_up_as_failed(runtime, smtp):  # noqa: ANN001
    """A message refused with 4xx past the attempt cap is marked failed with the reason, not retried forever."""
    smtp.handler.script("full@example.org", "DATA", *["452 4.2.2 Mailbox full"] * 20)
    enroll(runtime, "full@example.org")
    d = runtime.dispatcher()
    now = T0
    for _ in range(30):
        d.run_pass(now)
        if message_rows(runtime)[0].status != "deferred":
            break
        now += timedelta(hours=8)
    [row] = message_rows(runtime)
    assert row.status == "failed" and "gave up" in row.last_error and "452" in row.last_error
    assert 2 <= row.attempts <= runtime.settings.max_attempts
    assert now - T0 <= timedelta(days=3, hours=8)  # the give-up deadline
    assert smtp.handler.messages() == []


def test_421_mid_batch_defers_one_and_sends_the_rest(runtime, smtp):  # noqa: ANN001
    """A 421 closes the connection for one message; the transport reconnects for the others."""
    for name in ("one", "two", "three"):
        enroll(runtime, f"{name}@example.org")
    smtp.handler.script("two@example.org", "DATA", "421 4.7.0 Closing connection")
    s = runtime.dispatcher().run_pass(T0)
    assert (s.sent, s.deferred) == (2, 1)
    assert {m["To"].addresses[0].addr_spec for m in smtp.handler.messages()} == {"one@example.org", "three@example.org"}


def test_unsubscribe_after_claim_is_caught_before_sending(runtime, smtp):  # noqa: ANN001
    """A reader who unsubscribes after a worker claimed their email is checked again and not sent it."""
    from service.dispatch import PassSummary

    sub_id = enroll(runtime, "quick@example.org")
    d = runtime.dispatcher()
    summary = PassSummary()
    d.queue_due(T0, summary)
    ids = d.claim(T0, summary)
    with runtime.sessions() as s, s.begin():
        public_id = s.get(Subscriber, sub_id).public_id
        unsubscribe(s, UnsubscribeClaim(public_id, "back-pain-bundle"), now=T0, method="one-click")
    from service.transports import make_transport

    d.send_claimed(ids, make_transport(runtime.settings.email_url), lambda: T0, summary)
    assert summary.sent == 0 and summary.suppressed == 1
    assert smtp.handler.messages() == []
    assert message_rows(runtime)[0].status == "suppressed"


def test_unsubscribe_cancels_queued_messages(runtime, smtp):  # noqa: ANN001
    """Messages already queued are cancelled by an unsubscribe and never sent."""
    from service.dispatch import PassSummary

    sub_id = enroll(runtime, "q@example.org")
    runtime.dispatcher().queue_due(T0, PassSummary())
    with runtime.sessions() as s, s.begin():
        result = unsubscribe(s, UnsubscribeClaim(s.get(Subscriber, sub_id).public_id, "back-pain-bundle"), now=T0,
                             method="page")
    assert result.cancelled == 1
    assert runtime.dispatcher().run_pass(T0).sent == 0
    assert smtp.handler.messages() == []


def test_names_cannot_inject_headers_and_html_is_escaped(runtime, smtp):  # noqa: ANN001
    """Encoded newlines or markup in a name never become a header or live HTML in the email."""
    enroll(runtime, "inj@example.org", name="=?UTF-8?Q?=0A?=Bcc: victim@example.org")
    enroll(runtime, "xss@example.org", name="<script>alert(1)</script>")
    runtime.dispatcher().run_pass(T0)
    [inj] = smtp.handler.messages(to="inj@example.org")
    assert "Bcc" not in inj and len(inj.get_all("To")) == 1
    assert [r for _f, r, _raw in smtp.handler.accepted if "victim@example.org" in r] == []
    [xss] = smtp.handler.messages(to="xss@example.org")
    assert "<script>" not in xss.get_body(("html",)).get_content()
    assert "&lt;script&gt;" in xss.get_body(("html",)).get_content()
    assert "<script>alert(1)</script>" in xss.get_body(("plain",)).get_content()


def test_idn_domain_goes_out_in_punycode(runtime, smtp):  # noqa: ANN001
    """An internationalised domain is stored in Unicode and sent to the ASCII (Punycode) envelope address."""
    enroll(runtime, "user@bücher.example")
    assert runtime.dispatcher().run_pass(T0).sent == 1
    [(_from, rcpts, _raw)] = smtp.handler.accepted
    assert rcpts == ["user@xn--bcher-kva.example"]
    with runtime.sessions() as s:
        assert s.scalars(select(Subscriber.email)).one() == "user@bücher.example"


def test_one_message_row_per_enrollment_and_step(runtime, smtp):  # noqa: ANN001
    """Queueing the same due enrollment twice (two passes racing) creates one message row, not two."""
    from service.dispatch import PassSummary

    enroll(runtime, "once@example.org")
    d = runtime.dispatcher()
    d.queue_due(T0, PassSummary())
    with runtime.sessions() as s, s.begin():  # pretend another worker saw it as due too
        s.scalars(select(Enrollment)).one().next_due_at = T0
    d.queue_due(T0, PassSummary())
    with runtime.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 1
    assert d.run_pass(T0).sent == 1
    assert len(smtp.handler.messages()) == 1
