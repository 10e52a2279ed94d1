"""Plain-SMTP bounce tracking (VERP return paths, DSNs read from a Maildir), the soft-bounce and deferral
policies of the status model, and open/click tracking with signed redirects."""
from __future__ import annotations

import html as htmllib
import mailbox
import re
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from conftest import tampered, with_settings
from sqlalchemy import select
from test_provider_transports import T0, enroll

from service.app import create_app
from service.compose.tracking import click_token
from service.core.models import Event, Message, Subscriber
from service.core.verp import parse_verp, verp_address
from service.enrollment.suppression import is_suppressed
from service.feedback.delivery import DeliveryEvent, apply
from service.feedback.dsn import parse_dsn

FIXTURES = Path(__file__).parent / "fixtures" / "dsn"


def fixture(name: str, *, verp: str, recipient: str, message_id: str) -> bytes:
    text = (FIXTURES / name).read_text()
    return text.replace("{VERP}", verp).replace("{RECIPIENT}", recipient).replace("{MESSAGE_ID}", message_id).encode()


def sent_message(rt) -> Message:
    with rt.sessions() as s:
        [m] = s.scalars(select(Message)).all()
        s.expunge(m)
        return m


def test_dsn_fixtures_parse_into_the_right_events() -> None:
    """Hard 5.1.1 -> hard_bounce, soft 4.2.2 -> soft_bounce, both naming the message by VERP and Message-ID; an
    out-of-office auto-reply (even one quoting 5.1.1) is no DSN and yields nothing."""
    verp = verp_address("k", 42, "bounces.example.org")
    args = {"verp": verp, "recipient": "ada@example.com", "message_id": "<drip.1.abc@backpainwarriors.example>"}
    [hard] = parse_dsn(fixture("hard-5.1.1.eml", **args), secret="k")
    assert (hard.kind, hard.message_pk, hard.email) == ("hard_bounce", 42, "ada@example.com")
    assert hard.message_id_header == args["message_id"] and "5.1.1" in hard.detail
    [soft] = parse_dsn(fixture("soft-4.2.2.eml", **args), secret="k")
    assert (soft.kind, soft.message_pk) == ("soft_bounce", 42) and soft.message_id_header == args["message_id"]
    assert parse_dsn(fixture("out-of-office.eml", **args), secret="k") == []
    assert parse_dsn(fixture("hard-5.1.1.eml", **args), secret="other")[0].message_pk is None  # forged VERP


def test_verp_return_path_and_drip_bounces_reads_a_maildir(runtime, smtp, tmp_path) -> None:
    """With DRIP_BOUNCE_DOMAIN the SMTP envelope sender is bounces+<id>-<sig>@domain; `drip bounces --maildir`
    applies the hard DSN sent back to it, ignores the auto-reply, and does not process a message twice."""
    rt = with_settings(runtime, bounce_domain="bounces.example.org")
    sid = enroll(rt, "ada@example.com")
    assert rt.dispatcher().run_pass(T0).sent == 1
    [(mail_from, _rcpts, _raw)] = smtp.handler.accepted
    m = sent_message(rt)
    assert mail_from.endswith("@bounces.example.org") and parse_verp(rt.settings.secret_key, mail_from) == m.id
    box = mailbox.Maildir(str(tmp_path / "bounces"), create=True)
    args = {"verp": mail_from, "recipient": "ada@example.com", "message_id": m.message_id}
    box.add(fixture("out-of-office.eml", **args))
    box.add(fixture("hard-5.1.1.eml", **args))
    from service.cli import main
    env = {"DATABASE_URL": rt.settings.database_url, "DRIP_SECRET_KEY": rt.settings.secret_key,
           "DRIP_INSTANCE_DIR": str(tmp_path / "instance")}
    out = CliRunner().invoke(main, ["bounces", "--maildir", str(tmp_path / "bounces")], env=env)
    assert out.exit_code == 0, out.output
    assert "messages 2, not_dsn 1, applied 1" in out.output
    with rt.sessions() as s:
        assert s.get(Subscriber, sid).status == "bounced" and is_suppressed(s, "ada@example.com")
        assert s.get(Message, m.id).status == "bounced"
    again = CliRunner().invoke(main, ["bounces", "--maildir", str(tmp_path / "bounces")], env=env)
    assert "messages 0" in again.output


def test_soft_bounces_suppress_only_at_the_threshold_counted_once_a_day(runtime, smtp) -> None:
    """4.2.2 soft bounces: two on one day count once, so the reader stays active after the 2nd day and is
    suppressed on the 3rd distinct day (default 3 in 30 days)."""
    sid = enroll(runtime, "ada@example.com")
    assert runtime.dispatcher().run_pass(T0).sent == 1
    m = sent_message(runtime)
    policy = runtime.delivery_policy()
    for i, (days, expect) in enumerate([(0, "active"), (0.1, "active"), (1, "active"), (2, "bounced")]):
        raw = fixture("soft-4.2.2.eml", verp="x@y", recipient="ada@example.com", message_id=m.message_id)
        raw = raw.replace(b"SOFT1", f"SOFT{i}".encode())
        [ev] = parse_dsn(raw, secret=runtime.settings.secret_key)
        with runtime.sessions() as s, s.begin():
            assert apply(s, ev, now=T0 + timedelta(days=days, hours=1), policy=policy) == "applied"
        with runtime.sessions() as s:
            assert s.get(Subscriber, sid).status == expect, (i, days)
    with runtime.sessions() as s:
        assert is_suppressed(s, "ada@example.com")


def test_provider_deferral_past_the_deadline_fails_the_message(runtime, smtp) -> None:
    """A provider's "deferred" parks the sent message (no resend by us); a pass past the deadline (72 h) fails it,
    while a later "delivered" before the deadline would have won."""
    enroll(runtime, "ada@example.com")
    d = runtime.dispatcher()
    assert d.run_pass(T0).sent == 1
    m = sent_message(runtime)
    with runtime.sessions() as s, s.begin():
        apply(s, DeliveryEvent("deferred", source="sendgrid", event_id="d1", message_pk=m.id, detail="421 try later"),
              now=T0 + timedelta(hours=1))
    assert sent_message(runtime).status == "deferred" and sent_message(runtime).next_attempt_at is None
    d.run_pass(T0 + timedelta(hours=71))
    assert sent_message(runtime).status == "deferred" and len(smtp.handler.accepted) == 1
    assert d.run_pass(T0 + timedelta(hours=73)).failed == 1
    assert sent_message(runtime).status == "failed" and "still deferred" in sent_message(runtime).last_error


def test_hard_bounce_after_delivery_and_complaint_stop_every_enrollment(runtime, smtp) -> None:
    """A delivered message can still bounce (SES documents it); a complaint marks the reader complained,
    suppresses the address and stops the enrollment."""
    sid = enroll(runtime, "ada@example.com")
    runtime.dispatcher().run_pass(T0)
    m = sent_message(runtime)
    with runtime.sessions() as s, s.begin():
        apply(s, DeliveryEvent("delivered", source="ses", event_id="1", message_pk=m.id), now=T0)
        apply(s, DeliveryEvent("complaint", source="ses", event_id="2", message_pk=m.id), now=T0)
    with runtime.sessions() as s:
        sub = s.get(Subscriber, sid)
        assert (s.get(Message, m.id).status, sub.status) == ("complained", "complained")
        assert {e.status for e in sub.enrollments} == {"stopped"} and is_suppressed(s, "ada@example.com")


def _html(smtp) -> str:
    [msg] = smtp.handler.messages()
    return msg.get_body(("html",)).get_content()


def test_tracking_is_off_by_default(runtime, smtp) -> None:
    """Without DRIP_TRACKING=on, no link is rewritten and there is no pixel."""
    enroll(runtime, "ada@example.com")
    runtime.dispatcher().run_pass(T0)
    assert "/t/c/" not in _html(smtp) and "/t/o/" not in _html(smtp)


def test_tracking_wraps_links_but_never_unsubscribe_and_refuses_unsigned_targets(runtime, smtp) -> None:
    """Links become signed /t/c/ redirects (unsubscribe links stay as they are); a valid token redirects to
    the signed URL only; tampered tokens, ?u= targets and javascript: targets get 400; the pixel records an open."""
    rt = with_settings(runtime, tracking=True)
    enroll(rt, "ada@example.com")
    rt.dispatcher().run_pass(T0)
    html = _html(smtp)
    hrefs = [htmllib.unescape(h) for h in re.findall(r'href="([^"]+)"', html)]
    tracked = [h for h in hrefs if "/t/c/" in h]
    assert tracked and all(h.startswith("https://drip.example.org/t/c/") for h in tracked)
    assert [h for h in hrefs if "/unsubscribe/" in h]  # still present, unwrapped
    assert all("/unsubscribe/" not in h for h in tracked)
    pixel = re.search(r'src="https://drip\.example\.org(/t/o/[^"]+\.gif)"', html).group(1)
    app = create_app(runtime=rt)
    client = app.test_client()
    path = tracked[0].removeprefix("https://drip.example.org")
    r = client.get(path)
    assert r.status_code == 302 and r.headers["Location"].startswith("http") and "/t/c/" not in r.headers["Location"]
    assert client.get(path + "?u=https://evil.example").headers["Location"] == r.headers["Location"]
    token = path.rpartition("/")[2]
    flipped = tampered(token)
    for bad in (f"/t/c/{flipped}?u=https://evil.example", "/t/c/nonsense?u=https://evil.example",
                f"/t/c/{click_token(rt.settings.secret_key, sent_message(rt).id, 'javascript:alert(1)')}",
                f"/t/c/{click_token('another-secret', sent_message(rt).id, 'https://evil.example')}"):
        resp = client.get(bad)
        assert resp.status_code == 400 and "Location" not in resp.headers
    assert client.get(pixel).mimetype == "image/gif"
    with rt.sessions() as s:
        kinds = s.scalars(select(Event.type).where(Event.type.in_(("opened", "clicked")))).all()
    assert sorted(kinds) == ["clicked", "clicked", "opened"]


def test_drip_bounces_reads_an_imap_folder(runtime, smtp, tmp_path) -> None:
    """`drip bounces --imap` logs in with imaplib, applies the unseen DSN, skips the auto-reply, flags both
    \\Seen, and a second run finds nothing new; a wrong password is a clear error, not a traceback."""
    from fakes import FakeImap

    from service.cli import main
    rt = with_settings(runtime, bounce_domain="bounces.example.org")
    sid = enroll(rt, "ada@example.com")
    rt.dispatcher().run_pass(T0)
    [(mail_from, _r, _raw)] = smtp.handler.accepted
    args = {"verp": mail_from, "recipient": "ada@example.com", "message_id": sent_message(rt).message_id}
    imap = FakeImap("bounces", "pw")
    try:
        imap.messages = {7: fixture("soft-4.2.2.eml", **args), 8: fixture("out-of-office.eml", **args)}
        env = {"DATABASE_URL": rt.settings.database_url, "DRIP_SECRET_KEY": rt.settings.secret_key,
               "DRIP_INSTANCE_DIR": str(tmp_path / "instance")}
        url = f"imap://bounces:pw@127.0.0.1:{imap.port}/INBOX"
        out = CliRunner().invoke(main, ["bounces", "--imap", url], env=env)
        assert out.exit_code == 0, out.output
        assert "messages 2, not_dsn 1, applied 1" in out.output and imap.seen == {7, 8}
        assert "messages 0" in CliRunner().invoke(main, ["bounces", "--imap", url], env=env).output
        bad = CliRunner().invoke(main, ["bounces", "--imap", url.replace(":pw@", ":nope@")], env=env)
        assert bad.exit_code != 0 and "--imap" in bad.output
    finally:
        imap.close()
    with rt.sessions() as s:
        assert s.get(Subscriber, sid).status == "active"  # one soft bounce is below the threshold
        kinds = s.scalars(select(Event.type).where(Event.type == "soft_bounce")).all()
    assert kinds == ["soft_bounce"]
