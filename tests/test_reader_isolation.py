"""One reader's state changes only that reader's emails. Several readers in different states share one
database here: one pauses (snooze), one unsubscribes, one bounced, one's campaign step is held by the daily
cap; every other reader, and a reader who signs up meanwhile, still gets every email on time."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from service.dispatch import PassSummary
from service.models import Enrollment, Message, Subscriber
from service.signups import ConsentMeta, parse_signup, signup

BUNDLE = "back-pain-bundle"
SITE = {"Origin": "https://drip.example.org"}


def enroll(rt, email: str, now: datetime, campaign: str = BUNDLE) -> int:  # noqa: ANN001
    data = parse_signup({"email": email, "name": "Reader", "timezone": "UTC", "campaign": campaign},
                        campaigns=rt.campaigns, default_campaign=BUNDLE)
    with rt.sessions() as s, s.begin():
        return signup(s, data, campaign=rt.campaigns[campaign], meta=ConsentMeta("json"), now=now).subscriber_id


def prefs_path(rt, sid: int) -> str:  # noqa: ANN001
    with rt.sessions() as s:
        public_id = s.get(Subscriber, sid).public_id
    return rt.reader_links(public_id, 0)["preferences_url"].removeprefix(rt.settings.base_url)


def subjects(smtp, address: str) -> list[str]:  # noqa: ANN001
    return [m["Subject"] for m in smtp.handler.messages(to=address)]


def start_of_today() -> datetime:
    """09:00 UTC today: the snooze runs on the real clock, so the pass clock starts at the real date."""
    return datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)


def test_one_readers_snooze_holds_only_her_mail(client, runtime, smtp) -> None:
    """Three readers get their welcome; one pauses for four weeks. The other two still get every weekly
    step on time, a reader who signs up during the pause gets the welcome at once, and the pauser
    resumes with one email when her pause ends, not a burst of the weeks she missed."""
    t0 = start_of_today()
    steps = [s.subject for s in runtime.campaigns[BUNDLE].steps]
    ids = {name: enroll(runtime, f"{name}@example.org", t0) for name in ("ada", "bea", "cy")}
    d = runtime.dispatcher()
    assert d.run_pass(t0).sent == 3
    assert client.post(f"{prefs_path(runtime, ids['bea'])}/snooze", data={"weeks": "4"},
                       headers=SITE).status_code == 303
    with runtime.sessions() as s:
        until = s.get(Subscriber, ids["bea"]).snoozed_until
    assert until > t0 + timedelta(days=27)

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
