"""One reader's state changes only that reader's emails. Several readers in different states share one
database here: one pauses (snooze), one unsubscribes, one bounced, one's campaign step is held by the daily
cap; every other reader, and a reader who signs up meanwhile, still gets every email on time."""
from __future__ import annotations

import base64
import json
import mailbox
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from conftest import in_one_window, with_settings
from sqlalchemy import func, select, update
from test_reader import data_path, prefs_path

from service.app import create_app
from service.audience.signups import ConsentMeta, parse_signup, signup
from service.cli import main as cli_main
from service.core.config import RateLimit
from service.core.models import (
    Consent,
    Enrollment,
    Event,
    Message,
    MessageContent,
    PendingConfirmation,
    Subscriber,
    Suppression,
)
from service.core.verp import verp_address
from service.dispatch.policy import PassSummary
from service.enrollment.suppression import email_hash
from service.feedback.delivery import DeliveryEvent
from service.feedback.delivery import apply as apply_delivery
from service.operator.accounts import add_user, create_token
from service.operator.campaign_stats import set_paused
from service.transports import make_transport

BUNDLE = "back-pain-bundle"
SITE = {"Origin": "https://drip.example.org"}


def enroll(rt, email: str, now: datetime, campaign: str = BUNDLE) -> int:
    data = parse_signup({"email": email, "name": "Reader", "timezone": "UTC", "campaign": campaign},
                        campaigns=rt.campaigns, default_campaign=BUNDLE)
    with rt.sessions() as s, s.begin():
        return signup(s, data, campaign=rt.campaigns[campaign], meta=ConsentMeta("json"), now=now).subscriber_id


def subjects(smtp, address: str) -> list[str]:
    return [m["Subject"] for m in smtp.handler.messages(to=address)]


def start_of_today() -> datetime:
    """09:00 UTC today: the snooze runs on the real clock, so the pass clock starts at the real date."""
    return datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)


def test_one_readers_snooze_holds_only_her_mail(client, runtime, smtp) -> None:
    """Three readers get their welcome; one pauses for four weeks. The other two still get every weekly
    step on time, a reader who signs up during the pause gets the welcome at once, and the pauser
    resumes with one email when her pause ends, not a burst of the weeks she missed."""
    # Tomorrow 09:00: the snooze runs on the real clock, so its end must fall before the others' week-4 send
    # hour on day 28 whatever the time of day the test runs (from today 09:00 it failed after 09:00 UTC).
    t0 = start_of_today() + timedelta(days=1)
    steps = [s.subject for s in runtime.campaigns[BUNDLE].steps]
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
    d = runtime.dispatcher()
    assert d.run_pass(t0).sent == 3
    before = datetime.now(UTC)
    assert client.post(f"{prefs_path(runtime, ids['bea'])}/snooze", data={"weeks": "4"},
                       headers=SITE).status_code == 303
    with runtime.sessions() as s, s.begin():
        bea = s.get_one(Subscriber, ids["bea"])
        # four weeks from the real clock (compared with t0 it held only after 09:00 UTC)
        assert before + timedelta(weeks=4) <= bea.snoozed_until <= datetime.now(UTC) + timedelta(weeks=4)
        # The route counts four weeks from the real clock. Pin the end to the evening of day 27 so what
        # follows does not depend on the hour the suite runs: after 09:00 the pause would end after the
        # others' week 4 is due, and the pass that ends it would send theirs too.
        bea.snoozed_until = until = t0 + timedelta(days=27, hours=12)

    # A new reader during the pause: her welcome goes in the next pass.
    late = t0 + timedelta(hours=2)
    enroll(runtime, "dee@example.org", late)
    assert d.run_pass(late).sent == 1
    assert subjects(smtp, "dee@example.org") == steps[:1]

    # Week 1 is due on the calendar day a week after each welcome, at 09:00 UTC (the campaign's send hour
    # in the readers' zone): Ada, Cy and Dee get it, Bea does not.
    assert d.run_pass(t0 + timedelta(days=7)).sent == 3
    for name in ("ada", "cy", "dee"):
        assert subjects(smtp, f"{name}@example.org") == steps[:2]
    assert subjects(smtp, "bea@example.org") == steps[:1]
    assert d.run_pass(t0 + timedelta(days=14)).sent == 3  # week 2 for the others; Bea is still paused
    assert d.run_pass(t0 + timedelta(days=21)).sent == 3
    assert subjects(smtp, "bea@example.org") == steps[:1]

    # The pause ends: one email for Bea, the next a week later (no burst of the weeks she missed).
    after = until + timedelta(minutes=1)
    assert d.run_pass(after).sent == 1
    assert subjects(smtp, "bea@example.org") == steps[:2]
    for hours in (1, 24, 72):
        d.run_pass(after + timedelta(hours=hours))
    assert subjects(smtp, "bea@example.org") == steps[:2]
    assert subjects(smtp, "ada@example.org") == steps[:5]  # welcome, weeks 1-3, and week 4 on day 28


def test_queue_and_claim_see_only_the_snoozed_readers_own_rows(runtime, smtp) -> None:
    """The two places a snooze is read, one at a time: queueing a reader's due step, and claiming an email
    already queued. Each holds the snoozed reader's row and no other."""
    t0 = start_of_today()
    ids = [enroll(runtime, f"r{i}@example.org", t0) for i in range(4)]
    with runtime.sessions() as s, s.begin():
        s.get_one(Subscriber, ids[1]).snoozed_until = t0 + timedelta(days=14)
    d = runtime.dispatcher()
    summary = PassSummary()
    d.queue_due(t0, summary)
    assert summary.queued == 3
    with runtime.sessions() as s:
        queued = set(s.scalars(select(Message.subscriber_id)))
        waiting = s.scalars(select(Enrollment).where(Enrollment.subscriber_id == ids[1])).one()
    assert queued == {ids[0], ids[2], ids[3]}
    assert waiting.next_due_at is not None  # still due, waiting for the pause to end

    # Now another reader, whose welcome is already queued, pauses: only that message stays behind.
    with runtime.sessions() as s, s.begin():
        s.get_one(Subscriber, ids[2]).snoozed_until = t0 + timedelta(days=14)
    claimed = d.claim(t0, PassSummary())
    with runtime.sessions() as s:
        owners = set(s.scalars(select(Message.subscriber_id).where(Message.id.in_(claimed))))
    assert owners == {ids[0], ids[3]}


# -- several readers in different states, one behaviour at a time --------------------------------------
# Each test below puts readers in different states side by side and checks that one reader's state or
# action changes that reader's rows only: `footprint` is every row held about a reader, compared whole.
NEWSLETTER = "monthly-newsletter"  # the bundle's digest campaign
MAGNET = "plateau-14"  # a one-step lead magnet that continues into the bundle at week-01
READER_TABLES = (Subscriber, Consent, Enrollment, Message, Event, PendingConfirmation)


def footprint(rt, sid: int) -> dict[str, list[tuple]]:
    """Every row held about one reader, all columns, including the stored "as sent" copies of her emails."""
    out: dict[str, list[tuple]] = {}
    with rt.sessions() as s:
        for model in READER_TABLES:
            table = model.__table__
            owner = table.c.id if model is Subscriber else table.c.subscriber_id
            out[table.name] = [tuple(r) for r in s.execute(select(table).where(owner == sid).order_by(table.c.id))]
        out["message_contents"] = [tuple(r) for r in s.execute(
            select(MessageContent.message_id, MessageContent.raw).join(Message, Message.id == MessageContent.message_id)
            .where(Message.subscriber_id == sid).order_by(MessageContent.message_id))]
    return out


def footprints(rt, ids: dict[str, int], *names: str) -> dict[str, dict]:
    return {name: footprint(rt, ids[name]) for name in names}


def messages_of(rt, sid: int) -> list[tuple[str, str, str]]:
    """(campaign, step, status) of each of the reader's messages, in the order they were queued."""
    with rt.sessions() as s:
        return [tuple(r) for r in s.execute(select(Message.campaign, Message.step_key, Message.status)
                                            .where(Message.subscriber_id == sid).order_by(Message.id))]


def enrollments_of(rt, sid: int) -> dict[str, Enrollment]:
    with rt.sessions() as s:
        rows = s.scalars(select(Enrollment).where(Enrollment.subscriber_id == sid)).all()
        for row in rows:
            s.expunge(row)
    return {e.campaign: e for e in rows}


def status_of(rt, sid: int) -> str | None:
    with rt.sessions() as s:
        return s.scalar(select(Subscriber.status).where(Subscriber.id == sid))


def set_due(rt, sid: int, campaign: str, when: datetime, **changes: object) -> None:
    with rt.sessions() as s, s.begin():
        s.execute(update(Enrollment).where(Enrollment.subscriber_id == sid, Enrollment.campaign == campaign)
                  .values(next_due_at=when, **changes))


def link(message, pattern: str) -> str:
    """The path of the first link to `pattern` (a path prefix) in an email's plain-text body."""
    text = message.get_body(("plain",)).get_content()
    return re.search(rf"https://drip\.example\.org({pattern}/[A-Za-z0-9_.\-]+)", text).group(1)


@contextmanager
def web_with(runtime, **changes: object) -> Iterator[tuple]:
    """A runtime and Flask test client on the same database with some settings changed."""
    rt = with_settings(runtime, **changes)
    application = create_app(runtime=rt)
    application.config["TESTING"] = True
    try:
        yield rt, application.test_client()
    finally:
        rt.sessions.kw["bind"].dispose()


def test_queue_due_decides_for_each_reader_by_her_own_state(runtime) -> None:
    """A queue pass queues the due step of each reader who may get one and leaves every other reader's rows as they
    were, whatever her state (snoozed, complained, not yet due, in a paused campaign)."""
    t0 = start_of_today()
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy", "dee", "eve")}
    enroll(runtime, "ada@example.org", t0, campaign=NEWSLETTER)  # Ada also reads the (paused) newsletter
    ids["fay"] = enroll(runtime, "fay@example.org", t0, campaign=NEWSLETTER)  # only the paused newsletter
    with runtime.sessions() as s, s.begin():
        set_paused(s, NEWSLETTER, True, now=t0)
        s.get_one(Subscriber, ids["bea"]).snoozed_until = t0 + timedelta(days=14)
        s.get_one(Subscriber, ids["cy"]).status = "complained"  # her enrollment is still active
    set_due(runtime, ids["dee"], BUNDLE, t0 + timedelta(days=1))
    before = footprints(runtime, ids, "bea", "dee", "fay")
    ada_newsletter = enrollments_of(runtime, ids["ada"])[NEWSLETTER]

    summary = PassSummary()
    runtime.dispatcher().queue_due(t0, summary)

    assert summary.queued == 2
    assert messages_of(runtime, ids["ada"]) == [(BUNDLE, "welcome", "queued")]
    assert messages_of(runtime, ids["eve"]) == [(BUNDLE, "welcome", "queued")]
    assert messages_of(runtime, ids["cy"]) == []
    cy = enrollments_of(runtime, ids["cy"])[BUNDLE]
    assert (cy.status, cy.stopped_reason, cy.next_due_at) == ("stopped", "subscriber inactive", None)
    assert footprints(runtime, ids, "bea", "dee", "fay") == before
    still = enrollments_of(runtime, ids["ada"])[NEWSLETTER]
    assert (still.status, still.next_due_at, still.updated_at) == ("active", ada_newsletter.next_due_at,
                                                                   ada_newsletter.updated_at)
    for name in ("ada", "eve"):
        assert enrollments_of(runtime, ids[name])[BUNDLE].next_due_at is None  # waiting for the queued welcome


def test_claim_takes_each_queued_email_by_its_own_readers_state(runtime) -> None:
    """A claim takes each queued email by its own reader's state and leaves untouched the emails waiting for a retry,
    of a paused campaign or of a snoozed reader."""
    t0 = start_of_today()
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy", "dee")}
    ids["eve"] = enroll(runtime, "eve@example.org", t0, campaign=NEWSLETTER)
    d = runtime.dispatcher()
    d.queue_due(t0, PassSummary())
    with runtime.sessions() as s, s.begin():
        s.execute(update(Message).where(Message.subscriber_id == ids["bea"])
                  .values(next_attempt_at=t0 + timedelta(hours=1)))
        s.get_one(Subscriber, ids["dee"]).snoozed_until = t0 + timedelta(days=14)
        set_paused(s, NEWSLETTER, True, now=t0)
    before = footprints(runtime, ids, "bea", "dee", "eve")

    claimed = d.claim(t0, PassSummary())

    with runtime.sessions() as s:
        owners = set(s.scalars(select(Message.subscriber_id).where(Message.id.in_(claimed))))
    assert owners == {ids["ada"], ids["cy"]}
    assert footprints(runtime, ids, "bea", "dee", "eve") == before
    # The retry comes when it is due, and it is Bea's alone.
    later = d.claim(t0 + timedelta(hours=1), PassSummary())
    with runtime.sessions() as s:
        assert set(s.scalars(select(Message.subscriber_id).where(Message.id.in_(later)))) == {ids["bea"]}


class _AfterFirstEmail:
    """Wraps a transport: once the first email has been handed over, `action` runs (a reader acts while
    the rest of the chunk is still being sent)."""

    def __init__(self, inner, action) -> None:
        self.inner, self.action = inner, action

    def send(self, batch):
        def feed():
            for n, item in enumerate(batch):
                yield item
                if n == 0:
                    self.action()
        return self.inner.send(feed())

    def close(self) -> None:
        self.inner.close()


def test_recheck_before_send_drops_only_the_reader_who_left(client, runtime, smtp) -> None:
    """The check just before sending drops only the emails of readers who left after the claim (before the send or
    mid-chunk, or whose address was suppressed), and the others are sent."""
    t0 = start_of_today()
    names = ("ada", "bea", "cy", "dee", "eve", "fay")
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in names}
    d = runtime.dispatcher(recheck_seconds=0)
    d.queue_due(t0, PassSummary())
    claimed = d.claim(t0, PassSummary())
    assert len(claimed) == 6

    def unsubscribe(name: str) -> None:
        with runtime.sessions() as s:
            public_id = s.get_one(Subscriber, ids[name]).public_id
        path = runtime.unsubscribe_url(public_id, BUNDLE).removeprefix(runtime.settings.base_url)
        assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200

    unsubscribe("bea")
    with runtime.sessions() as s, s.begin():
        s.add(Suppression(email_hash=email_hash("fay@example.org"), reason="manual", created_at=t0))
    summary = PassSummary()
    transport = _AfterFirstEmail(make_transport(runtime.settings.email_url), lambda: unsubscribe("dee"))
    d.send_claimed(claimed, transport, lambda: t0, summary)

    assert (summary.sent, summary.suppressed) == (3, 3)
    assert sorted(r for m in smtp.handler.accepted for r in m[1]) == [f"{n}@example.org" for n in ("ada", "cy", "eve")]
    for name in ("ada", "cy", "eve"):
        assert messages_of(runtime, ids[name]) == [(BUNDLE, "welcome", "sent")]
        assert status_of(runtime, ids[name]) == "active"
        e = enrollments_of(runtime, ids[name])[BUNDLE]
        assert (e.status, e.next_step, e.next_due_at) == ("active", 1, t0 + timedelta(days=7))
    for name in ("bea", "dee", "fay"):
        assert messages_of(runtime, ids[name]) == [(BUNDLE, "welcome", "suppressed")]
    assert [status_of(runtime, ids[n]) for n in ("bea", "dee", "fay")] == ["unsubscribed", "unsubscribed", "active"]


def test_the_daily_cap_holds_only_the_capped_readers_email(runtime, smtp) -> None:
    """The daily cap counts each reader's own sends: one who had her email today waits for tomorrow while another's
    due at the same moment goes, and one with two due gets one."""
    t0 = start_of_today()
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
    for name in ("ada", "cy"):
        enroll(runtime, f"{name}@example.org", t0, campaign=NEWSLETTER)
    d = runtime.dispatcher(max_per_day=1)
    assert d.run_pass(t0).sent == 5  # welcomes are exempt from the cap
    # Day 7: Ada's week 1 goes at 09:00 UTC as scheduled. At noon Ada's newsletter, Bea's week 1 and both of
    # Cy's emails are due: Ada is at her cap already, Bea and Cy have had nothing that day.
    t1 = t0 + timedelta(days=7)
    noon = t1 + timedelta(hours=3)
    set_due(runtime, ids["ada"], NEWSLETTER, noon)
    set_due(runtime, ids["bea"], BUNDLE, noon)
    set_due(runtime, ids["cy"], BUNDLE, noon)
    set_due(runtime, ids["cy"], NEWSLETTER, noon)
    assert d.run_pass(t1).sent == 1

    summary = d.run_pass(noon)

    assert summary.sent == 2
    week1 = runtime.campaigns[BUNDLE].steps[1].subject
    month1 = runtime.campaigns[NEWSLETTER].steps[1].subject
    assert subjects(smtp, "bea@example.org")[-1] == week1
    assert subjects(smtp, "cy@example.org")[-1] == week1
    assert subjects(smtp, "ada@example.org")[-1] == week1  # from the morning; the newsletter waits
    tomorrow = t1 + timedelta(days=1)
    with runtime.sessions() as s:
        held = {(r.subscriber_id, r.campaign): r.next_attempt_at for r in s.execute(
            select(Message.subscriber_id, Message.campaign, Message.next_attempt_at).where(Message.status == "queued"))}
        held_events = set(s.scalars(select(Event.subscriber_id).where(Event.type == "held")))
    assert held == {(ids["ada"], NEWSLETTER): tomorrow, (ids["cy"], NEWSLETTER): tomorrow}
    assert held_events == {ids["ada"], ids["cy"]}
    assert messages_of(runtime, ids["bea"]) == [(BUNDLE, "welcome", "sent"), (BUNDLE, "week-01", "sent")]
    assert d.run_pass(tomorrow).sent == 2
    assert subjects(smtp, "ada@example.org")[-1] == month1
    assert subjects(smtp, "cy@example.org")[-1] == month1


def test_a_hard_bounce_at_send_stops_only_that_reader(runtime, smtp) -> None:
    """A relay's 550 5.1.1 for one reader in a pass bounces and suppresses her alone, while the readers sent in the
    same pass go on to week 1."""
    t0 = start_of_today()
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
    smtp.handler.script("bea@example.org", "RCPT", "550 5.1.1 <bea@example.org>: mailbox unavailable")
    d = runtime.dispatcher()

    summary = d.run_pass(t0)

    assert (summary.sent, summary.bounced) == (2, 1)
    assert status_of(runtime, ids["bea"]) == "bounced"
    assert enrollments_of(runtime, ids["bea"])[BUNDLE].status == "stopped"
    with runtime.sessions() as s:
        suppressed = set(s.scalars(select(Suppression.email_hash)))
    assert suppressed == {email_hash("bea@example.org")}
    for name in ("ada", "cy"):
        assert status_of(runtime, ids[name]) == "active"
        e = enrollments_of(runtime, ids[name])[BUNDLE]
        assert (e.status, e.next_step, e.next_due_at) == ("active", 1, t0 + timedelta(days=7))
    assert d.run_pass(t0 + timedelta(days=7)).sent == 2
    assert len(subjects(smtp, "ada@example.org")) == len(subjects(smtp, "cy@example.org")) == 2
    assert subjects(smtp, "bea@example.org") == []


def test_a_bounce_reported_later_cancels_only_that_readers_queued_mail(runtime, smtp) -> None:
    """A hard bounce reported later by a provider webhook cancels the bounced reader's queued email only, and the
    other readers' queued emails stay untouched and are sent."""
    t0 = start_of_today()
    with web_with(runtime, postmark_webhook_user="drip", postmark_webhook_password="s3cret-pw") as (rt, web):
        ids = {name: enroll(rt, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
        d = rt.dispatcher()
        assert d.run_pass(t0).sent == 3
        t1 = t0 + timedelta(days=7)
        assert d.queue_due(t1, PassSummary()) == 3
        with rt.sessions() as s:
            welcome = s.scalar(select(Message.id).where(Message.subscriber_id == ids["bea"],
                                                        Message.step_key == "welcome"))
        before = footprints(rt, ids, "ada", "cy")
        auth = {"Authorization": "Basic " + base64.b64encode(b"drip:s3cret-pw").decode()}
        bounce = {"RecordType": "Bounce", "ID": 1, "Type": "HardBounce", "TypeCode": 1, "MessageID": None,
                  "Email": "bea@example.org", "Metadata": {"drip_message": str(welcome)},
                  "Description": "The server was unable to deliver your message"}

        answer = web.post("/webhooks/postmark", json=bounce, headers=auth)

        assert answer.status_code == 200 and answer.get_json()["applied"] == 1
        assert status_of(rt, ids["bea"]) == "bounced"
        assert messages_of(rt, ids["bea"]) == [(BUNDLE, "welcome", "bounced"), (BUNDLE, "week-01", "suppressed")]
        assert footprints(rt, ids, "ada", "cy") == before
        assert d.run_pass(t1).sent == 2
        for name in ("ada", "cy"):
            assert messages_of(rt, ids[name]) == [(BUNDLE, "welcome", "sent"), (BUNDLE, "week-01", "sent")]


def test_soft_bounces_are_counted_per_reader(runtime, smtp) -> None:
    """Soft bounces are counted per reader: two readers whose soft bounces together span three days both stay, and
    only the reader with three days of her own is stopped."""
    t0 = start_of_today()
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
    d = runtime.dispatcher()
    assert d.run_pass(t0).sent == 3
    d.queue_due(t0 + timedelta(days=7), PassSummary())
    policy = runtime.delivery_policy()
    with runtime.sessions() as s:
        welcome = dict(s.execute(select(Message.subscriber_id, Message.id).where(Message.step_key == "welcome")).all())

    def soft(name: str, day: int) -> None:
        event = DeliveryEvent("soft_bounce", source="test", event_id=f"{name}-{day}", message_pk=welcome[ids[name]],
                              email=f"{name}@example.org", detail="452 4.2.2 mailbox full")
        with runtime.sessions() as s, s.begin():
            assert apply_delivery(s, event, now=t0 + timedelta(days=day, hours=3), policy=policy) == "applied"

    soft("ada", 1)
    soft("ada", 2)
    cy_before = footprint(runtime, ids["cy"])
    soft("bea", 3)
    assert status_of(runtime, ids["ada"]) == status_of(runtime, ids["bea"]) == "active"
    soft("ada", 3)
    assert status_of(runtime, ids["ada"]) == "bounced"
    assert status_of(runtime, ids["bea"]) == "active"
    assert messages_of(runtime, ids["bea"])[-1] == (BUNDLE, "week-01", "queued")
    assert messages_of(runtime, ids["ada"])[-1] == (BUNDLE, "week-01", "suppressed")
    assert footprint(runtime, ids["cy"]) == cy_before


def test_leaving_one_campaign_stops_only_that_readers_enrollment(client, runtime, smtp) -> None:
    """A reader leaving one campaign on her preference page stops only her enrollment in it and cancels only her
    queued email, while her other campaign and the other readers' rows stay as they were."""
    t0 = start_of_today()
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
    for name in ids:
        enroll(runtime, f"{name}@example.org", t0, campaign=NEWSLETTER)
    d = runtime.dispatcher()
    assert d.run_pass(t0).sent == 6
    t1 = t0 + timedelta(days=7)
    assert d.queue_due(t1, PassSummary()) == 3
    before = footprints(runtime, ids, "ada", "cy")
    newsletter_before = enrollments_of(runtime, ids["bea"])[NEWSLETTER]

    answer = client.post(f"{prefs_path(runtime, ids['bea'])}/leave", data={"campaign": BUNDLE}, headers=SITE)

    assert answer.status_code == 303
    bea = enrollments_of(runtime, ids["bea"])
    assert (bea[BUNDLE].status, bea[BUNDLE].stopped_reason) == ("stopped", "left on preference page")
    assert (bea[NEWSLETTER].status, bea[NEWSLETTER].next_due_at) == ("active", newsletter_before.next_due_at)
    assert messages_of(runtime, ids["bea"])[-1] == (BUNDLE, "week-01", "suppressed")
    assert footprints(runtime, ids, "ada", "cy") == before
    assert d.run_pass(t1).sent == 2
    assert [len(subjects(smtp, f"{n}@example.org")) for n in ("ada", "bea", "cy")] == [3, 2, 3]


def test_switching_to_the_digest_moves_only_that_reader(client, runtime, smtp) -> None:
    """A reader switching to the digest moves only her own enrollment and cancels only her own queued email, while
    the other readers stay untouched in the weekly campaign."""
    t0 = start_of_today()
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
    d = runtime.dispatcher()
    assert d.run_pass(t0).sent == 3
    t1 = t0 + timedelta(days=7)
    assert d.queue_due(t1, PassSummary()) == 3
    before = footprints(runtime, ids, "ada", "cy")

    answer = client.post(f"{prefs_path(runtime, ids['bea'])}/digest", data={"campaign": BUNDLE}, headers=SITE)

    assert answer.status_code == 303
    bea = enrollments_of(runtime, ids["bea"])
    assert bea[BUNDLE].status == "stopped" and bea[BUNDLE].stopped_reason == f"switched to {NEWSLETTER}"
    assert (bea[NEWSLETTER].status, bea[NEWSLETTER].next_step) == ("active", 1)
    assert messages_of(runtime, ids["bea"]) == [(BUNDLE, "welcome", "sent"), (BUNDLE, "week-01", "suppressed")]
    assert footprints(runtime, ids, "ada", "cy") == before
    with runtime.sessions() as s:
        assert set(s.scalars(select(Enrollment.subscriber_id).where(Enrollment.campaign == NEWSLETTER))) == {ids["bea"]}
    assert d.run_pass(t1).sent == 2
    assert subjects(smtp, "bea@example.org") == subjects(smtp, "ada@example.org")[:1]


def test_a_time_zone_change_moves_only_that_readers_due_time(client, runtime, smtp) -> None:
    """A time-zone change on one reader's preference page moves only her own due time, and each email goes at its
    own reader's hour."""
    t0 = start_of_today()
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
    d = runtime.dispatcher()
    assert d.run_pass(t0).sent == 3
    t1 = t0 + timedelta(days=7)
    before = footprints(runtime, ids, "bea", "cy")

    answer = client.post(f"{prefs_path(runtime, ids['ada'])}/profile",
                         data={"name": "Reader", "timezone": "Asia/Tokyo"}, headers=SITE)

    assert answer.status_code == 303
    tokyo_nine = t1.replace(hour=0)
    assert enrollments_of(runtime, ids["ada"])[BUNDLE].next_due_at == tokyo_nine
    assert footprints(runtime, ids, "bea", "cy") == before
    assert d.run_pass(tokyo_nine).sent == 1
    assert len(subjects(smtp, "ada@example.org")) == 2
    assert d.run_pass(t1).sent == 2
    assert len(subjects(smtp, "bea@example.org")) == len(subjects(smtp, "cy@example.org")) == 2


def test_pausing_a_campaign_holds_only_that_campaigns_mail(client, runtime, smtp) -> None:
    """Pausing one campaign holds only that campaign's queued emails and due enrollments (a reader of both still
    gets the other campaign's email), and resuming sends what was held."""
    t0 = start_of_today()
    ids = {"ada": enroll(runtime, "ada@example.org", t0), "bea": enroll(runtime, "bea@example.org", t0, NEWSLETTER),
           "cy": enroll(runtime, "cy@example.org", t0)}
    enroll(runtime, "cy@example.org", t0, campaign=NEWSLETTER)
    d = runtime.dispatcher()
    assert d.queue_due(t0, PassSummary()) == 4
    with runtime.sessions() as s, s.begin():
        add_user(s, "ops@example.org", "correct horse battery", now=t0)
    page = client.get("/admin/login").data.decode()
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post("/admin/login", data={"email": "ops@example.org", "password": "correct horse battery",
                                             "csrf": token}).status_code == 302
    page = client.get(f"/admin/campaigns/{NEWSLETTER}").data.decode()
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post(f"/admin/campaigns/{NEWSLETTER}/pause", data={"csrf": token}).status_code == 303
    ids["dee"] = enroll(runtime, "dee@example.org", t0, campaign=NEWSLETTER)

    assert d.run_pass(t0).sent == 2

    for name in ("ada", "cy"):
        assert messages_of(runtime, ids[name])[0] == (BUNDLE, "welcome", "sent")
        assert enrollments_of(runtime, ids[name])[BUNDLE].next_step == 1
    assert messages_of(runtime, ids["bea"]) == [(NEWSLETTER, "welcome", "queued")]
    assert messages_of(runtime, ids["cy"])[1] == (NEWSLETTER, "welcome", "queued")
    assert messages_of(runtime, ids["dee"]) == []
    assert enrollments_of(runtime, ids["dee"])[NEWSLETTER].next_due_at == t0
    assert client.post(f"/admin/campaigns/{NEWSLETTER}/resume", data={"csrf": token}).status_code == 303
    assert d.run_pass(t0 + timedelta(minutes=5)).sent == 3
    for name in ("bea", "cy", "dee"):
        assert subjects(smtp, f"{name}@example.org")[-1] == runtime.campaigns[NEWSLETTER].steps[0].subject


def test_the_per_address_signup_limit_counts_each_address_alone(runtime) -> None:
    """The per-address signup limit counts each address alone: an address at its limit is refused from any IP and
    for any campaign, while other addresses signing up in the same hour are accepted."""
    with web_with(runtime, signup_address_rate_limit=RateLimit(2, 3600)) as (rt, web):
        in_one_window(3600)

        def post(email: str, ip: str, campaign: str = BUNDLE):
            return web.post(f"/signup/{campaign}", json={"email": email, "timezone": "UTC"},
                            environ_base={"REMOTE_ADDR": ip}).status_code

        assert [post("ada@example.org", f"203.0.113.{i}") for i in (1, 2)] == [201, 200]
        assert post("ada@example.org", "203.0.113.3", NEWSLETTER) == 429
        assert post("bea@example.org", "203.0.113.3") == 201
        assert post("cy@example.org", "203.0.113.4") == 201
        assert post("ada@example.org", "203.0.113.4") == 429
        assert post("cy@example.org", "203.0.113.5", NEWSLETTER) == 201
        assert post("bea@example.org", "203.0.113.6") == 200
        with rt.sessions() as s:
            query = select(Subscriber.email, Enrollment.campaign).join(Enrollment)
            enrolled = sorted((e, c) for e, c in s.execute(query))
        assert enrolled == [("ada@example.org", BUNDLE), ("bea@example.org", BUNDLE),
                            ("cy@example.org", BUNDLE), ("cy@example.org", NEWSLETTER)]
        assert post("bea@example.org", "203.0.113.7") == 429  # now Bea has had her two as well


def test_double_opt_in_pending_signups_are_each_readers_own(runtime, smtp, tmp_path) -> None:
    """Pending double opt-in signups are each reader's own: a re-post within the cooldown, a confirmation and the
    expiry each change only that reader's pending signup, and expiry forgets only a reader with nothing else."""
    root = tmp_path / "templates"
    shutil.copytree(Path(__file__).resolve().parent.parent / "email_templates", root)
    toml = root / MAGNET / "campaign.toml"
    toml.write_text(toml.read_text().replace("send_hour = 9\n", "send_hour = 9\ndouble_opt_in = true\n", 1))
    now = datetime.now(UTC)
    with web_with(runtime, templates_dir=root) as (rt, web):
        ids = {"cy": enroll(rt, "cy@example.org", now)}  # Cy reads the bundle already
        for name in ("ada", "bea", "cy", "dee"):
            assert web.post(f"/signup/{MAGNET}", data={"email": f"{name}@example.org"}).status_code == 303
        with rt.sessions() as s:
            ids.update({e.split("@")[0]: i for i, e in s.execute(select(Subscriber.id, Subscriber.email))})
        d = rt.dispatcher()
        d.run_pass(now)
        confirm_subject = rt.campaigns[MAGNET].confirm_subject
        for name in ("ada", "bea", "cy", "dee"):
            assert subjects(smtp, f"{name}@example.org").count(confirm_subject) == 1
        with rt.sessions() as s, s.begin():  # Dee's cooldown is over; Ada's is not
            s.execute(update(PendingConfirmation).where(PendingConfirmation.subscriber_id == ids["dee"])
                      .values(requested_at=now - timedelta(hours=2)))
        before = footprints(rt, ids, "bea", "cy", "dee")

        assert web.post(f"/signup/{MAGNET}", data={"email": "ada@example.org"}).status_code == 303
        d.run_pass(now)
        for name in ("ada", "dee"):
            assert subjects(smtp, f"{name}@example.org").count(confirm_subject) == 1
        assert footprints(rt, ids, "bea", "cy", "dee") == before

        ada_before = footprint(rt, ids["ada"])
        bea_mail = next(m for m in smtp.handler.messages(to="bea@example.org") if m["Subject"] == confirm_subject)
        assert web.post(link(bea_mail, "/confirm")).status_code == 200
        assert set(enrollments_of(rt, ids["bea"])) == {MAGNET}
        assert MAGNET not in enrollments_of(rt, ids["cy"]) and enrollments_of(rt, ids["dee"]) == {}
        assert footprint(rt, ids["ada"]) == ada_before

        with rt.sessions() as s, s.begin():
            s.execute(update(PendingConfirmation).where(PendingConfirmation.subscriber_id.in_([ids["cy"], ids["dee"]]))
                      .values(requested_at=now - timedelta(days=8)))
        d.run_pass(now)
        with rt.sessions() as s:
            pending = set(s.scalars(select(PendingConfirmation.subscriber_id)))
            left = set(s.scalars(select(Subscriber.id)))
        assert pending == {ids["ada"]}
        assert left == {ids["ada"], ids["bea"], ids["cy"]}
        assert set(enrollments_of(rt, ids["cy"])) == {BUNDLE}


def test_continuation_enrolls_only_the_reader_who_completed_the_lead_magnet(runtime, smtp) -> None:
    """Finishing a lead magnet continues only that reader into the shared sequence, a reader already in it keeps
    her own enrollment, and each gets week 1 exactly once."""
    t0 = start_of_today()
    ids = {"ada": enroll(runtime, "ada@example.org", t0, MAGNET), "bea": enroll(runtime, "bea@example.org", t0)}
    enroll(runtime, "bea@example.org", t0, MAGNET)
    ids["cy"] = enroll(runtime, "cy@example.org", t0)
    d = runtime.dispatcher()

    assert d.run_pass(t0).sent == 4

    ada, bea, cy = (enrollments_of(runtime, ids[n]) for n in ("ada", "bea", "cy"))
    week1 = t0 + timedelta(days=7)
    assert (ada[MAGNET].status, ada[BUNDLE].origin_campaign, ada[BUNDLE].next_step, ada[BUNDLE].next_due_at) == (
        "completed", MAGNET, 1, week1)
    assert (bea[MAGNET].status, bea[BUNDLE].origin_campaign, bea[BUNDLE].next_step, bea[BUNDLE].next_due_at) == (
        "completed", None, 1, week1)
    assert set(cy) == {BUNDLE} and (cy[BUNDLE].origin_campaign, cy[BUNDLE].next_step) == (None, 1)
    with runtime.sessions() as s:
        continued = set(s.scalars(select(Consent.subscriber_id).where(Consent.source == "continuation")))
    assert continued == {ids["ada"]}
    assert d.run_pass(week1).sent == 3
    step = runtime.campaigns[BUNDLE].steps[1].subject
    for name in ids:
        assert subjects(smtp, f"{name}@example.org").count(step) == 1


def test_a_grown_campaign_reactivates_each_reader_by_her_own_messages(client, runtime, smtp) -> None:
    """A campaign gaining a step reactivates each completed reader by her own messages: a reader who already has
    the new step or has unsubscribed stays completed, and other readers are untouched."""
    t0 = start_of_today()
    ids = {name: enroll(runtime, f"{name}@example.org", t0, MAGNET) for name in ("ada", "bea", "cy", "dee")}
    ids["eve"] = enroll(runtime, "eve@example.org", t0)
    assert runtime.dispatcher().run_pass(t0).sent == 5
    assert {n: enrollments_of(runtime, ids[n])[MAGNET].status for n in ("ada", "bea", "cy", "dee")} == dict.fromkeys(
        ("ada", "bea", "cy", "dee"), "completed")
    glute = runtime.campaigns[MAGNET]
    extra = replace(glute.steps[0], key="extra", index=1, delay=replace(glute.steps[0].delay, days=2),
                    subject="Glute extra")
    grown = {**runtime.campaigns, MAGNET: replace(glute, steps=(*glute.steps, extra))}
    with runtime.sessions() as s, s.begin():  # Cy got the new step already (from an earlier deployment of it)
        cy_enrollment = s.scalar(select(Enrollment.id).where(Enrollment.subscriber_id == ids["cy"],
                                                             Enrollment.campaign == MAGNET))
        s.add(Message(enrollment_id=cy_enrollment, subscriber_id=ids["cy"], campaign=MAGNET, step_key="extra",
                      step_index=1, to_email="cy@example.org", status="sent", attempts=1, created_at=t0,
                      updated_at=t0, sent_at=t0))
    with runtime.sessions() as s:
        public_id = s.get_one(Subscriber, ids["dee"]).public_id
    path = runtime.unsubscribe_url(public_id, MAGNET).removeprefix(runtime.settings.base_url)
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    before = footprints(runtime, ids, "cy", "dee", "eve")

    runtime.dispatcher(campaigns=grown).run_pass(t0 + timedelta(minutes=1))

    for name in ("ada", "bea"):
        e = enrollments_of(runtime, ids[name])[MAGNET]
        assert (e.status, e.next_step, e.next_due_at) == ("active", 1, t0 + timedelta(days=2))
    assert footprints(runtime, ids, "cy", "dee", "eve") == before
    assert runtime.dispatcher(campaigns=grown).run_pass(t0 + timedelta(days=2)).sent == 2
    assert {n for n in ids if "Glute extra" in subjects(smtp, f"{n}@example.org")} == {"ada", "bea"}


def test_export_and_erasure_touch_only_that_readers_rows(client, runtime, smtp) -> None:
    """A reader's data export holds only her rows, and an erasure (hers on the preference page, the operator's
    through the API) removes only that reader's rows while the others' mail goes on."""
    t0 = start_of_today()
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
    d = runtime.dispatcher()
    assert d.run_pass(t0).sent == 3
    t1 = t0 + timedelta(days=7)
    assert d.queue_due(t1, PassSummary()) == 3
    others = footprints(runtime, ids, "bea", "cy")

    answer = client.post(data_path(client, smtp, prefs_path(runtime, ids["ada"]), "export", "ada@example.org"),
                         headers=SITE)

    assert answer.status_code == 200
    body = answer.get_data(as_text=True)
    assert "ada@example.org" in body and "bea@" not in body and "cy@" not in body
    data = json.loads(body)
    with runtime.sessions() as s:
        ada_messages = list(s.scalars(select(Message.step_key).where(Message.subscriber_id == ids["ada"])
                                      .order_by(Message.id)))
    assert [m["step"] for m in data["messages"]] == ada_messages == ["welcome", "week-01"]
    assert {m["to"] for m in data["messages"]} == {"ada@example.org"}
    assert footprints(runtime, ids, "bea", "cy") == others

    ada_before = footprint(runtime, ids["ada"])
    assert ada_before["message_contents"]  # her welcome as sent is stored
    erase = client.post(data_path(client, smtp, prefs_path(runtime, ids["bea"]), "erase", "bea@example.org"),
                        data={"confirm": "erase"}, headers=SITE)
    assert erase.status_code == 200
    empty = {table: [] for table in footprint(runtime, ids["bea"])}
    assert footprint(runtime, ids["bea"]) == empty
    assert footprint(runtime, ids["cy"]) == others["cy"]
    assert footprint(runtime, ids["ada"]) == ada_before

    with runtime.sessions() as s, s.begin():
        token = create_token(s, "isolation", now=datetime.now(UTC), scopes=("read", "write"))
    gone = client.delete(f"/api/v1/subscribers/{ids['cy']}", headers={"Authorization": f"Bearer {token}"})
    assert gone.status_code == 204
    assert footprint(runtime, ids["cy"]) == empty
    assert footprint(runtime, ids["ada"]) == ada_before
    with runtime.sessions() as s:
        assert set(s.scalars(select(Suppression.email_hash))) == {email_hash("bea@example.org"),
                                                                 email_hash("cy@example.org")}
        assert s.scalar(select(func.count()).select_from(Message)) == 2  # Ada's two
    assert d.run_pass(t1).sent == 1
    # her welcome, the data link she asked for (sent at once, not a campaign email) and week-01
    assert len(subjects(smtp, "ada@example.org")) == 3


def test_the_unsubscribe_link_in_an_email_stops_only_its_reader(client, runtime, smtp) -> None:
    """The unsubscribe links in a reader's own email (the one-click header, the footer's page) stop only that
    reader and cancel only her queued email."""
    t0 = start_of_today()
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
    d = runtime.dispatcher()
    assert d.run_pass(t0).sent == 3
    t1 = t0 + timedelta(days=7)
    assert d.queue_due(t1, PassSummary()) == 3
    ada_before, cy_before = footprint(runtime, ids["ada"]), footprint(runtime, ids["cy"])

    (bea_mail,) = smtp.handler.messages(to="bea@example.org")
    header = re.search(r"<(https://[^>]+)>", bea_mail["List-Unsubscribe"]).group(1)
    one_click = client.post(header.removeprefix(runtime.settings.base_url), data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200
    assert status_of(runtime, ids["bea"]) == "unsubscribed"
    assert messages_of(runtime, ids["bea"]) == [(BUNDLE, "welcome", "sent"), (BUNDLE, "week-01", "suppressed")]
    assert footprint(runtime, ids["ada"]) == ada_before
    assert footprint(runtime, ids["cy"]) == cy_before

    (cy_mail,) = smtp.handler.messages(to="cy@example.org")
    footer = link(cy_mail, "/unsubscribe")
    assert client.get(footer).status_code == 200
    assert client.post(footer).status_code == 200
    assert status_of(runtime, ids["cy"]) == "unsubscribed"
    assert enrollments_of(runtime, ids["cy"])[BUNDLE].status == "stopped"
    assert footprint(runtime, ids["ada"]) == ada_before
    assert d.run_pass(t1).sent == 1
    assert [len(subjects(smtp, f"{n}@example.org")) for n in ("ada", "bea", "cy")] == [2, 1, 1]


def test_unsubscribed_after_counts_each_readers_own_last_email(client, runtime, smtp) -> None:
    """The campaign funnel's "unsubscribed after" puts each unsubscribed reader on her own last email before she
    left."""
    t0 = start_of_today() - timedelta(days=14)  # in the past: the unsubscribes happen on the real clock
    for name in ("ada", "bea", "cy"):
        enroll(runtime, f"{name}@example.org", t0)
    d = runtime.dispatcher()
    assert d.run_pass(t0).sent == 3

    def unsubscribe(name: str) -> None:
        (first, *_rest) = smtp.handler.messages(to=f"{name}@example.org")
        assert client.post(link(first, "/unsubscribe"), data={"List-Unsubscribe": "One-Click"}).status_code == 200

    unsubscribe("bea")
    assert d.run_pass(t0 + timedelta(days=7)).sent == 2
    unsubscribe("ada")
    with runtime.sessions() as s, s.begin():
        token = create_token(s, "isolation", now=datetime.now(UTC))
    stats = client.get(f"/api/v1/campaigns/{BUNDLE}", headers={"Authorization": f"Bearer {token}"}).get_json()
    after = {step["key"]: step["unsubscribed_after"] for step in stats["steps"]}
    assert after["welcome"] == 1 and after["week-01"] == 1
    assert sum(after.values()) == 2
    assert stats["enrollments"] == {"active": 1, "completed": 0, "stopped": 2}


def _bounce_email(n: int, *, verp: str, recipient: str, message_id: str) -> bytes:
    """Report number `n` of a mail server (RFC 3464) that `recipient` does not exist (550 5.1.1), sent back
    to `verp`, returning the headers of the email whose Message-ID is `message_id`."""
    text = (Path(__file__).parent / "fixtures" / "dsn" / "hard-5.1.1.eml").read_text()
    text = text.replace("<20260302150500.HARD1@mx.example.net>", f"<20260302150500.report{n}@mx.example.net>")
    return text.replace("{VERP}", verp).replace("{RECIPIENT}", recipient).replace("{MESSAGE_ID}", message_id).encode()


def test_a_bounce_email_stops_only_the_reader_whose_message_it_proves(runtime, smtp, tmp_path) -> None:
    """A bounce email read by `drip bounces` stops only the reader whose email it proves (by its signed VERP
    address or our Message-ID), never another reader whose address the report merely names."""
    t0 = start_of_today()
    with web_with(runtime, bounce_domain="bounces.example.org") as (rt, _web):
        ids = {name: enroll(rt, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
        d = rt.dispatcher()
        assert d.run_pass(t0).sent == 3
        assert d.queue_due(t0 + timedelta(days=7), PassSummary()) == 3
        return_path = {rcpts[0]: mail_from for mail_from, rcpts, _raw in smtp.handler.accepted}
        with rt.sessions() as s:
            welcomes = select(Message.to_email, Message.message_id).where(Message.step_key == "welcome")
            message_id = dict(s.execute(welcomes).all())
        box = mailbox.Maildir(str(tmp_path / "bounces"), create=True)
        env = {"DATABASE_URL": rt.settings.database_url, "DRIP_SECRET_KEY": rt.settings.secret_key,
               "DRIP_INSTANCE_DIR": str(tmp_path / "instance")}

        def read_bounces() -> str:
            out = CliRunner().invoke(cli_main, ["bounces", "--maildir", str(tmp_path / "bounces")], env=env)
            assert out.exit_code == 0, out.output
            return out.output

        # Ada's welcome really bounced: the report comes back to its VERP address and names her.
        box.add(_bounce_email(1, verp=return_path["ada@example.org"], recipient="ada@example.org",
                              message_id=message_id["ada@example.org"]))
        before = footprints(rt, ids, "bea", "cy")
        assert "applied 1" in read_bounces()
        assert status_of(rt, ids["ada"]) == "bounced"
        assert messages_of(rt, ids["ada"])[-1] == (BUNDLE, "week-01", "suppressed")
        assert footprints(rt, ids, "bea", "cy") == before

        # Two reports that name Bea but prove nothing about her: one came back to Cy's own VERP address (a
        # forwarding alias of Cy's, or Cy forging it), one to an address we never signed. Neither stops Bea.
        box.add(_bounce_email(2, verp=return_path["cy@example.org"], recipient="bea@example.org",
                              message_id="<20260302.1@mx.example.net>"))
        box.add(_bounce_email(3, verp=verp_address("not-our-key", ids["bea"], "bounces.example.org"),
                              recipient="bea@example.org", message_id="<20260302.2@mx.example.net>"))
        output = read_bounces()
        assert status_of(rt, ids["bea"]) == "active"
        with rt.sessions() as s:
            assert set(s.scalars(select(Suppression.email_hash))) == {email_hash("ada@example.org")}
        assert footprints(rt, ids, "bea", "cy") == before
        assert "applied 0" in output and "unknown 2" in output
