"""Dispatch over real SMTP: the welcome and its headers, the weekly schedule, retries, bounces, suppression.

Time is controlled by passing `now` to a pass (what `drip tick --now` does), never by sleeping.
"""
from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from conftest import at
from sqlalchemy import func, select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.audience.unsubscribe import unsubscribe
from service.core.models import Enrollment, Event, Message, Subscriber
from service.core.tokens import UnsubscribeClaim
from service.enrollment.suppression import is_suppressed

T0 = at("2026-03-02T15:00:00")  # a Monday; US daylight saving starts on Sunday 2026-03-08


def enroll(rt, email: str, *, name: str = "", tz: str | None = None, now=T0) -> int:
    data = parse_signup({"email": email, "name": name, "timezone": tz}, campaigns=rt.campaigns,
                        default_campaign=rt.settings.default_campaign)
    with rt.sessions() as s, s.begin():
        result = signup(s, data, campaign=rt.campaigns[data.campaign], meta=ConsentMeta("json"), now=now)
    return result.subscriber_id


def message_rows(rt) -> list[Message]:
    with rt.sessions() as s:
        return list(s.scalars(select(Message).order_by(Message.id)))


def steps(rt):
    return rt.campaigns["back-pain-bundle"].steps


def test_welcome_goes_out_over_smtp_with_every_header(runtime, smtp):
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


def test_weekly_emails_follow_the_send_hour_across_daylight_saving(runtime, smtp):
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


def test_a_late_service_catches_up_one_email_per_pass(runtime, smtp):
    """After weeks of downtime a pass sends late instead of skipping, and never more than one email per reader."""
    enroll(runtime, "late@example.org")
    d = runtime.dispatcher()
    d.run_pass(T0)
    later = T0 + timedelta(days=60)
    assert d.run_pass(later).sent == 1
    assert d.run_pass(later + timedelta(minutes=5)).sent == 0  # next step: 7 days after this late send
    assert [m["Subject"] for m in smtp.handler.messages()] == [s.subject for s in steps(runtime)[:2]]


def test_451_then_250_retries_with_backoff(runtime, smtp):
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


def test_550_bounces_suppresses_and_never_retries(runtime, smtp, client):
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


def test_policy_refusal_fails_the_message_without_suppressing(runtime, smtp):
    """A 5.7.x policy refusal fails that email but says nothing about the mailbox: no suppression."""
    smtp.handler.script("policy@example.org", "DATA", "554 5.7.1 Message rejected by policy")
    enroll(runtime, "policy@example.org")
    assert runtime.dispatcher().run_pass(T0).failed == 1
    with runtime.sessions() as s:
        assert not is_suppressed(s, "policy@example.org")
        enrollment = s.scalars(select(Enrollment)).one()
    assert enrollment.status == "active" and enrollment.next_step == 1 and enrollment.next_due_at is not None


def test_smtp_down_then_back(runtime, smtp):
    """While the SMTP server is down messages wait with backoff; once it is back each is sent once."""
    enroll(runtime, "a@example.org")
    enroll(runtime, "b@example.org")
    smtp.stop()
    d = runtime.dispatcher()
    assert d.run_pass(T0).deferred == 2
    rows = message_rows(runtime)
    assert all(r.status == "deferred" and "cannot connect" in r.last_error for r in rows)
    assert d.run_pass(T0 + timedelta(minutes=3)).deferred == 2
    assert {r.attempts for r in message_rows(runtime)} == {0}  # the relay's outage is not the readers' fault
    smtp.start()
    assert d.run_pass(T0 + timedelta(minutes=30)).sent == 2
    assert sorted(m["To"].addresses[0].addr_spec for m in smtp.handler.messages()) == ["a@example.org", "b@example.org"]
    with runtime.sessions() as s:
        assert set(s.scalars(select(Subscriber.status))) == {"active"}


def test_a_relay_down_for_days_never_gives_readers_up(runtime, smtp):
    """Days of refused connections leave the welcome waiting, no attempt burned; it goes out once the relay is back."""
    enroll(runtime, "patient@example.org")
    smtp.stop()
    d = runtime.dispatcher()
    now = T0
    for _ in range(40):
        d.run_pass(now)
        now += timedelta(hours=3)
    [row] = message_rows(runtime)
    assert (row.status, row.attempts) == ("deferred", 0)
    with runtime.sessions() as s:
        assert s.scalars(select(Enrollment.next_step)).one() == 0
    smtp.start()
    assert d.run_pass(now + timedelta(hours=7)).sent == 1
    assert [m["Subject"] for m in smtp.handler.messages()] == [steps(runtime)[0].subject]


def test_refused_sender_is_a_configuration_problem_not_a_bounce(runtime, smtp):
    """A 5xx to our own MAIL FROM defers the message without counting an attempt or suppressing anyone."""
    enroll(runtime, "fine@example.org")
    smtp.handler.script("", "MAIL", "553 5.7.1 Sender address rejected")
    s = runtime.dispatcher().run_pass(T0)
    assert (s.bounced, s.failed, s.deferred) == (0, 0, 1)
    [row] = message_rows(runtime)
    assert row.attempts == 0 and "refused" in row.last_error
    with runtime.sessions() as ses:
        assert not is_suppressed(ses, "fine@example.org")


def test_replies_about_the_message_do_not_suppress_the_reader(runtime, smtp):
    """5.3.4 (too big) and a bare 'relay not permitted' fail the email but leave the address alone."""
    enroll(runtime, "big@example.org")
    enroll(runtime, "relay@example.org")
    smtp.handler.script("big@example.org", "DATA", "552 5.3.4 Message size exceeds fixed limit")
    smtp.handler.script("relay@example.org", "RCPT", "550 relay not permitted")
    s = runtime.dispatcher().run_pass(T0)
    assert (s.failed, s.bounced) == (2, 0)
    with runtime.sessions() as ses:
        assert not is_suppressed(ses, "big@example.org") and not is_suppressed(ses, "relay@example.org")
        assert set(ses.scalars(select(Subscriber.status))) == {"active"}


def test_persistent_4xx_gives_up_as_failed(runtime, smtp):
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


def test_421_mid_batch_defers_one_and_sends_the_rest(runtime, smtp):
    """A 421 closes the connection for one message; the transport reconnects for the others."""
    for name in ("one", "two", "three"):
        enroll(runtime, f"{name}@example.org")
    smtp.handler.script("two@example.org", "DATA", "421 4.7.0 Closing connection")
    s = runtime.dispatcher().run_pass(T0)
    assert (s.sent, s.deferred) == (2, 1)
    assert {m["To"].addresses[0].addr_spec for m in smtp.handler.messages()} == {"one@example.org", "three@example.org"}


def test_unsubscribe_after_claim_is_caught_before_sending(runtime, smtp):
    """A reader who unsubscribes after a worker claimed their email is checked again and not sent it."""
    from service.dispatch.policy import PassSummary

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


def test_unsubscribe_cancels_queued_messages(runtime, smtp):
    """Messages already queued are cancelled by an unsubscribe and never sent."""
    from service.dispatch.policy import PassSummary

    sub_id = enroll(runtime, "q@example.org")
    runtime.dispatcher().queue_due(T0, PassSummary())
    with runtime.sessions() as s, s.begin():
        result = unsubscribe(s, UnsubscribeClaim(s.get(Subscriber, sub_id).public_id, "back-pain-bundle"), now=T0,
                             method="page")
    assert result.cancelled == 1
    assert runtime.dispatcher().run_pass(T0).sent == 0
    assert smtp.handler.messages() == []


def test_names_cannot_inject_headers_and_html_is_escaped(runtime, smtp):
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


def test_idn_domain_goes_out_in_punycode(runtime, smtp):
    """An internationalised domain is stored in Unicode and sent to the ASCII (Punycode) envelope address."""
    enroll(runtime, "user@bücher.example")
    assert runtime.dispatcher().run_pass(T0).sent == 1
    [(_from, rcpts, _raw)] = smtp.handler.accepted
    assert rcpts == ["user@xn--bcher-kva.example"]
    with runtime.sessions() as s:
        assert s.scalars(select(Subscriber.email)).one() == "user@bücher.example"


def test_one_message_row_per_enrollment_and_step(runtime, smtp):
    """Queueing the same due enrollment twice (two passes racing) creates one message row, not two."""
    from service.dispatch.policy import PassSummary

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


def test_unsubscribe_while_a_slow_relay_works_through_the_chunk(runtime, smtp):
    """Readers are re-checked about a second before each send, so an unsubscribe mid-chunk still counts."""
    import threading
    import time

    ids = [enroll(runtime, f"slow{i}@example.org", now=T0) for i in range(6)]
    smtp.handler.data_delay = 0.4
    d = runtime.dispatcher(recheck_seconds=0.3)

    def unsubscribe_the_last() -> None:
        while not smtp.handler.accepted:
            time.sleep(0.02)
        with runtime.sessions() as s, s.begin():
            unsubscribe(s, UnsubscribeClaim(s.get(Subscriber, ids[-1]).public_id, "back-pain-bundle"), now=T0,
                        method="one-click")

    t = threading.Thread(target=unsubscribe_the_last)
    t.start()
    summary = d.run_pass(T0)
    t.join()
    assert (summary.sent, summary.suppressed) == (5, 1)
    assert smtp.handler.messages(to="slow5@example.org") == []


def test_a_look_ahead_tick_leases_on_the_real_clock(runtime, smtp):
    """`tick --now` in the past or future decides what is due, but leases run on real time: no live worker
    can take over its claim at once, and a killed look-ahead tick does not lock rows until that date."""
    from service.core.db import utcnow
    from service.dispatch.policy import PassSummary

    enroll(runtime, "past@example.org", now=T0)
    d = runtime.dispatcher()
    d.queue_due(T0, PassSummary())
    before = utcnow()
    d.claim(T0, PassSummary())  # T0 is months before the real now
    [row] = message_rows(runtime)
    assert before + d.lease - timedelta(seconds=5) <= row.lease_until <= utcnow() + d.lease
    far = utcnow() + timedelta(days=3650)
    assert runtime.dispatcher().claim(far, PassSummary()) == []  # a far-future tick cannot steal the live lease
