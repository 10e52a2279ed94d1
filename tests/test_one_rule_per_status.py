"""One SMTP status, one effect: the same status answered at once by the relay (a real SMTP server on
loopback) and reported later in a bounce email (a DSN) suppresses the reader, or not, alike. Two other
readers share the database and keep getting their mail whatever happens to the first."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import at
from sqlalchemy import select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.core.models import Message, Subscriber
from service.core.smtp_status import Verdict, classify
from service.dispatch.policy import PassSummary
from service.enrollment.suppression import is_suppressed
from service.feedback.delivery import apply
from service.feedback.dsn import parse_dsn

T0 = at("2026-05-04T13:00:00")
BUNDLE = "back-pain-bundle"
DSN = (Path(__file__).parent / "fixtures" / "dsn" / "hard-5.1.1.eml").read_text()

# (reply at RCPT, what it says about the reader's mailbox)
CASES = [
    ("550 5.1.1 user unknown", Verdict.MAILBOX),
    ("552 5.2.2 mailbox full", Verdict.MAILBOX),
    ("550 5.4.4 host not found", Verdict.MAILBOX),
    ("552 5.2.3 message too big", Verdict.REFUSED),
    ("552 5.3.4 message too big for system", Verdict.REFUSED),
    ("550 5.6.0 content refused", Verdict.REFUSED),
    ("550 5.7.1 policy: spam", Verdict.REFUSED),
    ("550 5.7.515 authentication required", Verdict.REFUSED),
]


def enroll(rt, email: str) -> int:
    data = parse_signup({"email": email, "name": "Reader", "campaign": BUNDLE}, campaigns=rt.campaigns,
                        default_campaign=BUNDLE)
    with rt.sessions() as s, s.begin():
        return signup(s, data, campaign=rt.campaigns[BUNDLE], meta=ConsentMeta("json"), now=T0).subscriber_id


def reader_state(rt, sid: int) -> tuple[str, bool]:
    with rt.sessions() as s:
        subscriber = s.get_one(Subscriber, sid)
        return subscriber.status, is_suppressed(s, subscriber.email_key)


def dsn_for(rt, address: str, status: str) -> bytes:
    with rt.sessions() as s:
        message_id = s.scalars(select(Message.message_id).where(Message.to_email == address)).one()
    code, enhanced = status.split()[:2]
    text = (DSN.replace("{VERP}", "bounces@drip.example.org").replace("{RECIPIENT}", address)
            .replace("{MESSAGE_ID}", message_id).replace("Status: 5.1.1", f"Status: {enhanced}")
            .replace("550 5.1.1", f"{code} {enhanced}"))
    return text.encode()


@pytest.mark.parametrize(("reply", "verdict"), CASES, ids=[c[0].split()[1] for c in CASES])
def test_the_same_status_has_the_same_effect_at_once_and_in_a_bounce_email(runtime, smtp, reply, verdict) -> None:
    """Reader A's welcome is refused at RCPT with `reply`; reader B's is accepted and later comes back in
    a DSN with the same status; C is untouched. A and B end in the same state; C stays subscribed."""
    assert classify(int(reply[:3]), reply, stage="RCPT") is verdict
    a, b, c = (enroll(runtime, f"{n}@example.org") for n in ("a", "b", "c"))
    smtp.handler.script("a@example.org", "RCPT", reply)
    summary = runtime.dispatcher().run_pass(T0)
    assert summary.sent == 2
    [event] = parse_dsn(dsn_for(runtime, "b@example.org", reply), secret=runtime.settings.secret_key)
    with runtime.sessions() as s, s.begin():
        assert apply(s, event, now=T0, policy=runtime.delivery_policy()) == "applied"

    expected = ("bounced", True) if verdict is Verdict.MAILBOX else ("active", False)
    assert reader_state(runtime, a) == expected
    assert reader_state(runtime, b) == expected
    assert reader_state(runtime, c) == ("active", False)
    with runtime.sessions() as s:
        statuses = dict(s.execute(select(Message.to_email, Message.status)).all())
    refused = "bounced" if verdict is Verdict.MAILBOX else "failed"
    assert statuses == {"a@example.org": refused, "b@example.org": refused, "c@example.org": "sent"}


def test_transient_statuses_never_suppress() -> None:
    """4xx at once, a 4.x.x in a DSN, or nothing readable: retry or count a soft bounce, never blame the
    mailbox outright."""
    assert classify(451, "4.2.0 try later", stage="RCPT") is Verdict.TRANSIENT
    assert classify(None, "4.2.2") is Verdict.TRANSIENT
    assert classify(None, "") is Verdict.TRANSIENT
    assert classify(550, "relay not permitted", stage="RCPT") is Verdict.REFUSED
    assert classify(550, "no such user", stage="RCPT") is Verdict.MAILBOX
    assert classify(550, "no such user", stage="DATA") is Verdict.REFUSED
    assert classify(250, "2.0.0 ok") is Verdict.OK


def test_a_refusal_reported_before_the_hand_over_is_recorded_changes_nothing(runtime, smtp) -> None:
    """A bounce email about a message this worker is still sending (its outcome not yet written) is kept as
    history; the message stays with the worker, so its real outcome is recorded and the sequence goes on."""
    a = enroll(runtime, "a@example.org")
    enroll(runtime, "b@example.org")
    d = runtime.dispatcher()
    d.queue_due(T0, PassSummary())
    claimed = d.claim(T0, PassSummary())
    assert len(claimed) == 2
    [event] = parse_dsn(dsn_for(runtime, "a@example.org", "552 5.3.4"), secret=runtime.settings.secret_key)
    with runtime.sessions() as s, s.begin():
        assert apply(s, event, now=T0, policy=runtime.delivery_policy()) == "applied"
    with runtime.sessions() as s:
        assert dict(s.execute(select(Message.to_email, Message.status)).all()) == {
            "a@example.org": "sending", "b@example.org": "sending"}
    assert reader_state(runtime, a) == ("active", False)
