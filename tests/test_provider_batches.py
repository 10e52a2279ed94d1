"""Provider transports at network speed: Postmark's and Resend's batch endpoints, and a bounded pool of
concurrent keep-alive requests for SendGrid, Mailgun and SES, each against a local server answering in the
provider's documented format. What one-request-per-email sending guaranteed still holds: one result per
email with the provider's id, one refused email failing alone, 401/403 pausing everything, 429 waits
honoured, timeouts settled or retried, and no email sent twice when a batch is retried."""
from __future__ import annotations

import base64
import json
import re
import subprocess
from datetime import timedelta

import dkim
import pytest
from conftest import at, with_settings
from fakes import FakeProvider, Reply
from sqlalchemy import select
from test_provider_transports import enroll, provider_runtime

from service.compose import as_sent
from service.core.models import Message, MessageContent, Subscriber
from service.enrollment.suppression import is_suppressed

T0 = at("2026-03-02T15:00:00")


@pytest.fixture
def fake(request: pytest.FixtureRequest):
    server = FakeProvider(request.param)
    yield server
    server.close()


def messages(rt) -> dict[str, Message]:
    with rt.sessions() as s:
        rows = s.scalars(select(Message)).all()
        for m in rows:
            s.expunge(m)
    return {m.to_email: m for m in rows}


@pytest.mark.parametrize("fake", ["postmark", "resend"], indirect=True)
def test_a_batch_sends_many_emails_in_one_request_and_keeps_each_result(runtime, fake) -> None:
    """Six readers, one request: each message gets its own provider id. A reader the provider refuses
    fails alone; for Postmark an inactive recipient (406) is bounced and suppressed; the others are sent."""
    fake.refuse = {"bad@": (300, "Invalid 'To' address"), "gone@": (406, "Inactive recipient")}
    rt = provider_runtime(runtime, fake)
    addresses = [f"r{i}@example.com" for i in range(4)] + ["bad@example.com", "gone@example.com"]
    for address in addresses:
        enroll(rt, address)
    summary = rt.dispatcher().run_pass(T0)
    assert len(fake.posts()) == 1 and fake.posts()[0].path.endswith("/batch")
    rows = messages(rt)
    ok = [rows[a] for a in addresses[:4]]
    assert all(m.status == "sent" and m.provider_message_id for m in ok)
    assert len({m.provider_message_id for m in ok}) == 4
    assert rows["bad@example.com"].status == "failed" and "Invalid 'To' address" in rows["bad@example.com"].last_error
    with rt.sessions() as s:
        gone = rows["gone@example.com"]
        if fake.provider == "postmark":
            assert gone.status == "bounced" and is_suppressed(s, "gone@example.com")
            assert s.get(Subscriber, gone.subscriber_id).status == "bounced"
        else:  # Resend reports refusals as validation errors: failed, the reader not blamed
            assert gone.status == "failed" and not is_suppressed(s, "gone@example.com")
        assert not is_suppressed(s, "bad@example.com")
    assert summary.sent == 4 and fake.sends == 4
    # nothing is sent again later: the failed ones are not retried, the sent ones are done
    rt.dispatcher().run_pass(T0 + timedelta(days=1))
    assert len(fake.posts()) == 1


@pytest.mark.parametrize("fake", ["sendgrid", "mailgun", "ses"], indirect=True)
def test_single_email_apis_send_concurrently_and_keep_each_id(runtime, fake) -> None:
    """With 0.2 s per answer, 24 emails through 8 concurrent requests take a few round trips, not 24; each
    message keeps its own provider id; the server saw up to 8 requests at once, never more."""
    fake.latency = 0.2
    rt = provider_runtime(runtime, fake, concurrency="8")
    for i in range(24):
        enroll(rt, f"r{i}@example.com")
    summary = rt.dispatcher().run_pass(T0)
    assert summary.sent == 24 and fake.sends == 24 and len(fake.posts()) == 24
    assert 2 <= fake.max_in_flight <= 8
    rows = messages(rt).values()
    assert all(m.status == "sent" for m in rows) and len({m.provider_message_id for m in rows}) == 24


@pytest.mark.parametrize("fake", ["sendgrid", "postmark"], indirect=True)
def test_429_stops_the_pass_and_everything_waits_as_told_then_goes_once(runtime, fake) -> None:
    """The first request goes, the second is answered 429 with Retry-After: 120. Nothing more is sent in
    that pass; every email not sent waits at least 120 s (only the refused one counts an attempt); after
    the wait each reader gets exactly one email."""
    fake.script += [Reply(200), Reply(429, {"message": "slow down"}, {"Retry-After": "120"})]
    rt = provider_runtime(runtime, fake, concurrency="1", batch="2")
    for i in range(8):
        enroll(rt, f"r{i}@example.com")
    d = rt.dispatcher()
    d.run_pass(T0)
    assert len(fake.posts()) == 2
    rows = messages(rt).values()
    sent = [m for m in rows if m.status == "sent"]
    waiting = [m for m in rows if m.status == "deferred"]
    assert len(sent) == (2 if fake.provider == "postmark" else 1) and len(sent) + len(waiting) == 8
    assert all((m.next_attempt_at - T0).total_seconds() >= 120 for m in waiting)
    refused = 2 if fake.provider == "postmark" else 1  # the emails of the 429 request
    assert sorted(m.attempts for m in waiting) == [0] * (len(waiting) - refused) + [1] * refused
    assert d.run_pass(T0 + timedelta(seconds=100)).sent == 0 and len(fake.posts()) == 2
    d.run_pass(T0 + timedelta(seconds=200))
    assert all(m.status == "sent" for m in messages(rt).values())
    assert fake.sends == 8  # nobody twice


@pytest.mark.parametrize("fake", ["postmark", "resend", "sendgrid"], indirect=True)
def test_a_retried_batch_sends_nothing_twice(runtime, fake) -> None:
    """A request answered 503 sent nothing: its emails are retried in a later pass, the ones accepted
    alongside it are not. Every reader ends with exactly one email."""
    fake.script += [Reply(200), Reply(503, {"message": "unavailable"})]
    rt = provider_runtime(runtime, fake, concurrency="4", batch="3")
    for i in range(9):
        enroll(rt, f"r{i}@example.com")
    d = rt.dispatcher()
    d.run_pass(T0)
    first = messages(rt).values()
    assert {m.status for m in first} == {"sent", "deferred"}
    d.run_pass(T0 + timedelta(hours=1))
    assert all(m.status == "sent" for m in messages(rt).values())
    assert fake.sends == 9


@pytest.mark.parametrize("fake", ["postmark", "mailgun"], indirect=True)
def test_a_timed_out_request_defers_its_emails_as_outcome_unknown(runtime, fake) -> None:
    """A request accepted but answered after the timeout: its emails are deferred with "outcome unknown"
    (no idempotency key at these providers: the retry may duplicate them, the pinned policy); the
    emails of other requests are sent and never retried."""
    fake.script += [Reply(200), Reply(200, delay=1.5)]
    rt = provider_runtime(runtime, fake, timeout="0.5", concurrency="1", batch="2")
    for i in range(4):
        enroll(rt, f"r{i}@example.com")
    d = rt.dispatcher()
    d.run_pass(T0)
    rows = messages(rt).values()
    unknown = [m for m in rows if m.status == "deferred"]
    assert len(unknown) == (2 if fake.provider == "postmark" else 1)
    assert all("outcome unknown" in m.last_error for m in unknown)
    d.run_pass(T0 + timedelta(hours=1))
    assert all(m.status == "sent" for m in messages(rt).values())
    assert fake.sends == 4 + len(unknown)  # the duplicates the policy accepts, and no more


@pytest.mark.parametrize("fake", ["sendgrid", "resend"], indirect=True)
def test_a_key_revoked_mid_pass_pauses_and_charges_nobody(runtime, fake, caplog) -> None:
    """The first request is accepted, then the key is refused (401) while other requests are in flight:
    sending pauses, the accepted emails stay sent, every other message waits with no attempt counted."""
    fake.script += [Reply(200)] + [Reply(401, {"message": "revoked"})] * 20
    rt = provider_runtime(runtime, fake, concurrency="4", batch="2")
    for i in range(12):
        enroll(rt, f"r{i}@example.com")
    summary = rt.dispatcher().run_pass(T0)
    assert summary.paused == 1 and summary.failed == 0 and summary.bounced == 0
    rows = messages(rt).values()
    sent = [m for m in rows if m.status == "sent"]
    assert len(sent) == fake.sends >= 1
    assert {(m.status, m.attempts) for m in rows if m.status != "sent"} == {("deferred", 0)}
    assert any("SENDING PAUSED" in r.getMessage() for r in caplog.records)


def test_concurrency_and_batch_settings_are_checked() -> None:
    """`concurrency` and `batch` must be whole numbers in range; `batch` never exceeds the provider's limit."""
    from service.core.config import ConfigError
    from service.transports import make_transport

    for bad in ("concurrency=0", "concurrency=x", "concurrency=1000", "batch=0", "batch=501", "batch=-1"):
        with pytest.raises(ConfigError, match="DRIP_EMAIL_URL: (concurrency|batch)"):
            make_transport(f"postmark://t@?{bad}")
    assert make_transport("postmark://t@").batch_size == 100
    assert make_transport("postmark://t@?batch=500").batch_size == 500
    assert make_transport("resend://k@?batch=20&concurrency=3").batch_size == 20
    assert make_transport("sendgrid://k@?batch=50").batch_size == 1  # no batch endpoint: one email a request
    assert make_transport("ses://A:s@eu-west-1?concurrency=3").concurrency == 3


@pytest.mark.parametrize("fake", ["mailgun", "ses", "postmark"], indirect=True)
def test_dkim_signature_travels_only_where_our_mime_is_sent(runtime, fake, tmp_path) -> None:
    """With a DKIM key configured, Mailgun and SES are sent our MIME with a signature dkimpy verifies;
    Postmark is sent fields and signs its own message, so ours is not made (nor stored as sent)."""
    key = tmp_path / "k.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    record = f"v=DKIM1; k=ed25519; p={base64.b64encode(der[-32:]).decode()}".encode()
    rt = with_settings(provider_runtime(runtime, fake), dkim_domain="backpainwarriors.example", dkim_selector="s1",
                       dkim_key_file=str(key))
    enroll(rt, "ada@example.com")
    assert rt.dispatcher().run_pass(T0).sent == 1
    [seen] = fake.posts()
    with rt.sessions() as s:
        [stored] = [as_sent.read(s, c.raw) for c in s.scalars(select(MessageContent))]
    if fake.provider == "postmark":
        assert b"DKIM-Signature" not in seen.body and b"DKIM-Signature" not in stored
        return
    if fake.provider == "ses":
        raw = base64.b64decode(json.loads(seen.body)["Content"]["Raw"]["Data"])
    else:
        raw = re.search(rb"\r\n\r\n(DKIM-Signature:.*?)\r\n--[\w-]{16,}--\r\n$", seen.body, re.S).group(1)
    assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: record)
    assert stored.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("fake", ["sendgrid"], indirect=True)
def test_answers_in_flight_are_yielded_before_a_failing_feed_raises(fake) -> None:
    """When the dispatcher's feed fails (its database, mid re-check) while requests are out, the transport
    first yields the answers of those requests, so the emails they carried get recorded, then re-raises."""
    from service.transports import OutboundEmail, make_transport

    def email_for(n: int) -> OutboundEmail:
        return OutboundEmail(message_pk=n, envelope_from="c@backpainwarriors.example", recipient=f"r{n}@example.com",
                             from_header="Coach <c@backpainwarriors.example>", to_header=f"r{n}@example.com",
                             subject="hi", text="hi\n", html="<p>hi</p>", headers=(), raw=b"")

    def feed():
        yield from (email_for(n) for n in range(1, 4))
        raise RuntimeError("database went away")

    fake.latency = 1.0  # long enough that the three overlap at the server even on a loaded machine
    transport = make_transport(f"sendgrid://SG.key@?endpoint={fake.url}&concurrency=4")
    assert [r.ok for r in transport.send([email_for(0)])] == [True]  # answered: later requests go together
    got = []
    with pytest.raises(RuntimeError, match="database went away"):
        for result in transport.send(feed()):
            got.append(result)
    transport.close()
    assert len(got) == 3 and all(r.ok and r.provider_id for r in got) and fake.sends == 4
    assert fake.max_in_flight == 3  # the three were out together when the feed failed


@pytest.mark.parametrize("fake", ["postmark"], indirect=True)
def test_the_first_request_goes_alone_and_the_next_are_composed_meanwhile(fake) -> None:
    """Until the API has answered once, one request is out; the emails of the next requests are taken
    (composed) meanwhile but sent only after that answer, then together."""
    from service.transports import OutboundEmail, make_transport

    results: list = []
    taken: list[int] = []  # answers yielded so far, when each email was taken

    def feed():
        for n in range(1, 9):
            taken.append(len(results))
            yield OutboundEmail(message_pk=n, envelope_from="c@backpainwarriors.example",
                                recipient=f"r{n}@example.com", from_header="Coach <c@backpainwarriors.example>",
                                to_header=f"r{n}@example.com", subject="hi", text="hi\n", html="<p>hi</p>",
                                headers=(), raw=b"")

    # Long enough that the three staged batches overlap at the server even on a loaded machine (at 0.3 s,
    # a run beside two other test processes saw only two of them out together).
    fake.latency = 1.0
    transport = make_transport(f"postmark://t@?endpoint={fake.url}&concurrency=4&batch=2")
    for result in transport.send(feed()):
        results.append(result)
    transport.close()
    assert len(results) == 8 and all(r.ok for r in results) and fake.sends == 8
    assert taken == [0] * 8  # all four batches composed before the first answer came back
    assert fake.max_in_flight == 3  # the first went alone; the three staged batches went together after it
