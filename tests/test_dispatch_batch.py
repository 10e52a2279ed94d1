"""The dispatcher writes whole batches at once, for speed; what each reader gets must not change.

A pass over many readers with mixed outcomes in one chunk, checked reader by reader; the number of SQL
statements a pass makes does not grow with the number of readers it sends to; PostgreSQL stores the
"as sent" copies with lz4.
"""
from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from conftest import at
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.compose import as_sent
from service.core.db import utcnow
from service.core.models import ContentChunk, Enrollment, Event, Message, MessageContent, Subscriber
from service.enrollment.suppression import is_suppressed

T0 = at("2026-03-03T15:00:00")  # a Tuesday


def enroll_many(rt, count: int, *, prefix: str = "reader", tz: str | None = None) -> list[str]:
    addresses = [f"{prefix}{i:04d}@example.com" for i in range(count)]
    campaign = rt.campaigns[rt.settings.default_campaign]
    with rt.sessions() as s, s.begin():
        for address in addresses:
            data = parse_signup({"email": address, "name": f"Reader {address[:10]}", "timezone": tz},
                                campaigns=rt.campaigns, default_campaign=campaign.key)
            signup(s, data, campaign=campaign, meta=ConsentMeta("json"), now=T0)
    return addresses


def test_a_large_mixed_batch_gives_every_reader_exactly_their_outcome(runtime, smtp):
    """250 readers in one pass (several chunks and claim batches): refusals, a deferral and an unsubscribed
    reader sit among accepted emails of the same chunk; each reader's message, events and next step are
    exactly what they would be alone."""
    addresses = enroll_many(runtime, 250, tz="Europe/Berlin")
    bounced, refused, deferred, left = addresses[7], addresses[120], addresses[121], addresses[130]
    smtp.handler.script(bounced, "RCPT", "550 5.1.1 no such mailbox")
    smtp.handler.script(refused, "DATA", "554 5.7.1 message refused as spam")
    smtp.handler.script(deferred, "RCPT", "451 4.3.0 try again later")
    with runtime.sessions() as s, s.begin():
        s.execute(text("UPDATE subscribers SET status = 'unsubscribed' WHERE email = :e"), {"e": left})

    summary = runtime.dispatcher(batch_size=100).run_pass(T0)

    received = Counter(r.lower() for _f, rcpts, _raw in smtp.handler.accepted for r in rcpts)
    expected_ok = set(addresses) - {bounced, refused, deferred, left}
    assert set(received) == expected_ok and set(received.values()) == {1}
    assert (summary.sent, summary.bounced, summary.failed, summary.deferred) == (246, 1, 1, 1)
    second = runtime.campaigns[runtime.settings.default_campaign].steps[1]
    with runtime.sessions() as s:
        rows = {m.to_email: m for m in s.scalars(select(Message))}
        assert {a: rows[a].status for a in (bounced, refused, deferred)} == {
            bounced: "bounced", refused: "failed", deferred: "deferred"}
        assert left not in rows  # never queued: the reader had left before the pass
        assert is_suppressed(s, bounced) and not is_suppressed(s, refused)
        for address in expected_ok:
            m = rows[address]
            assert (m.status, m.sent_at, m.lease_until, m.attempts) == ("sent", T0, None, 1)
            assert m.subject and m.claimed_by
        history = [(e.message_id, e.type) for e in s.scalars(select(Event).where(Event.message_id.is_not(None))
                                                           .order_by(Event.id))]
        per_message: dict[int, list[str]] = {}
        for message_id, kind in history:
            per_message.setdefault(message_id, []).append(kind)
        assert {tuple(v) for k, v in per_message.items() if rows[addresses[0]].id == k} == {
            ("queued", "attempt", "sent")}
        assert all(v == ["queued", "attempt", "sent"] for k, v in per_message.items()
                   if k in {rows[a].id for a in expected_ok})
        enrollments = {sub.email: e for e, sub in s.execute(select(Enrollment, Subscriber).join(Subscriber))}
        moved = enrollments[addresses[0]]
        assert (moved.next_step, moved.next_step_key, moved.last_sent_at) == (1, second.key, T0)
        # the next step is due its delay later at the campaign's send hour, in the reader's own zone
        assert moved.next_due_at is not None and moved.next_due_at.date() >= (T0 + timedelta(days=6)).date()
        assert all(enrollments[a].next_due_at == moved.next_due_at for a in expected_ok)
        assert enrollments[bounced].status == "stopped"
        # the "as sent" copy is exactly what the server received
        raw_by_rcpt = {rcpts[0].lower(): raw for _f, rcpts, raw in smtp.handler.accepted}
        stored = s.get(MessageContent, rows[addresses[42]].id)
        assert stored is not None and as_sent.read(s, stored.raw).replace(b"\r\n", b"\n") == raw_by_rcpt[
            addresses[42]].replace(b"\r\n", b"\n")
        # stored as a layout, the step's fixed pieces once in content_chunks
        assert stored.raw.startswith(as_sent.MAGIC) and len(stored.raw) < len(raw_by_rcpt[addresses[42]]) / 3
        assert s.scalar(select(func.count()).select_from(ContentChunk)) >= 2


def _statements_for_one_pass(rt, smtp, count: int, prefix: str) -> int:
    enroll_many(rt, count, prefix=prefix)
    engine = rt.sessions.kw["bind"]
    seen: list[str] = []

    def count_it(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count_it)
    try:
        # flushes and re-checks by chunk only (not by the clock), so the count is deterministic
        summary = rt.dispatcher(flush_seconds=3600, recheck_seconds=3600).run_pass(T0)
    finally:
        event.remove(engine, "before_cursor_execute", count_it)
    assert summary.sent == count
    return len(seen)


def test_statements_per_pass_do_not_grow_with_the_readers_it_sends_to(runtime, smtp):
    """Set-based queue, claim, re-check and record: 90 readers take as many SQL statements as 9 (one
    chunk each); a per-reader write anywhere on the common path would add at least 81."""
    few = _statements_for_one_pass(runtime, smtp, 9, "few")
    many = _statements_for_one_pass(runtime, smtp, 90, "many")
    assert many <= few + 2, (few, many)


@pytest.mark.postgresql_only
def test_postgresql_compresses_stored_emails_with_lz4(runtime):
    with runtime.sessions() as s:
        method = s.execute(text("SELECT attcompression FROM pg_attribute WHERE attrelid = "
                                "'message_contents'::regclass AND attname = 'raw'")).scalar()
    assert method == "l"  # lz4: ~0.2 ms per stored email instead of pglz's ~1.1 ms


@pytest.fixture
def fail_once(runtime):
    """A real database error, once: a trigger refuses the first write of a given address's message as
    `sent` (the sequence is not transactional, so the refusal is not rolled back with the write)."""
    def arm(address: str) -> None:
        with runtime.sessions() as s, s.begin():
            s.execute(text("CREATE SEQUENCE fault_once"))
            s.execute(text("CREATE FUNCTION fault_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                           "IF nextval('fault_once') = 1 THEN RAISE EXCEPTION 'injected fault'; END IF; "
                           "RETURN NEW; END $$"))
            s.execute(text("CREATE TRIGGER fault_once BEFORE UPDATE ON messages FOR EACH ROW WHEN "
                           f"(NEW.status = 'sent' AND NEW.to_email = '{address}') EXECUTE FUNCTION fault_once()"))
    yield arm
    with runtime.sessions() as s, s.begin():  # the database outlives the test: leave no trigger behind
        s.execute(text("DROP TRIGGER IF EXISTS fault_once ON messages"))
        s.execute(text("DROP FUNCTION IF EXISTS fault_once()"))
        s.execute(text("DROP SEQUENCE IF EXISTS fault_once"))


def _sent_again_after_the_lease(rt, smtp) -> int:
    """A later pass whose real clock is past every lease: how many more emails reach the server."""
    before = len(smtp.handler.accepted)
    rt.dispatcher(real_clock=lambda: utcnow() + timedelta(hours=1)).run_pass(T0)
    return len(smtp.handler.accepted) - before


@pytest.mark.postgresql_only  # outcomes are written on a second thread on PostgreSQL only
def test_a_failed_background_write_is_written_again_when_the_chunk_ends(runtime, smtp, fail_once):
    """The write of an accepted email fails once and the chunk then ends: the pass still fails, but the
    email is recorded as sent (one retry, as for a write on the dispatcher's own thread), so it is never
    sent a second time after its lease."""
    (reader,) = enroll_many(runtime, 1, prefix="solo")
    fail_once(reader)
    with pytest.raises(SQLAlchemyError, match="injected fault"):
        runtime.dispatcher(flush_seconds=0).run_pass(T0)
    with runtime.sessions() as s:
        m = s.scalars(select(Message)).one()
        assert (m.status, m.sent_at, m.lease_until) == ("sent", T0, None)
    assert len(smtp.handler.accepted) == 1 and _sent_again_after_the_lease(runtime, smtp) == 0


@pytest.mark.postgresql_only
def test_a_background_write_failing_before_the_last_flush_loses_no_answers(runtime, smtp, fail_once):
    """The write of the first email fails while the server answers the second; that failure surfaces at
    the chunk's last flush. Both answers are still written: the first email as sent (not sent again after
    its lease), the second as deferred."""
    first, second = enroll_many(runtime, 2, prefix="pair")
    fail_once(first)
    smtp.handler.data_delay = 0.6  # the first email's answer comes after one flush interval
    smtp.handler.script(second, "RCPT", "451 4.3.0 try again later")  # the second's comes at once
    with pytest.raises(SQLAlchemyError, match="injected fault"):
        runtime.dispatcher(flush_seconds=0.3).run_pass(T0)
    with runtime.sessions() as s:
        assert {m.to_email: m.status for m in s.scalars(select(Message))} == {first: "sent", second: "deferred"}
    smtp.handler.data_delay = 0
    assert len(smtp.handler.accepted) == 1 and _sent_again_after_the_lease(runtime, smtp) == 0


@pytest.mark.postgresql_only
def test_a_failed_background_write_is_written_again_when_the_provider_then_refuses_our_key(runtime, fail_once):
    """The provider accepts the first email, whose write then fails on the second thread, and refuses our key
    on the second: the first is still recorded as sent, the second is handed back and sending is paused."""
    from dataclasses import replace

    from fakes import FakeProvider, Reply, transport_url

    from service.dispatch import sending_pause as sending
    from service.runtime import build_runtime

    fake = FakeProvider("postmark")
    try:
        # batch=1: one request per email, so the provider can accept the first and refuse the second
        rt = build_runtime(replace(runtime.settings, email_url=transport_url("postmark", fake, batch="1")))
        first, second = enroll_many(rt, 2, prefix="key")
        fail_once(first)
        fake.script.extend([Reply(200), Reply(401, {"ErrorCode": 10, "Message": "bad token"})])
        summary = rt.dispatcher(flush_seconds=0).run_pass(T0)
        with rt.sessions() as s:
            rows = {m.to_email: (m.status, m.attempts) for m in s.scalars(select(Message))}
            assert sending.paused_reason(s)
        assert summary.paused == 1 and rows == {first: ("sent", 1), second: ("deferred", 0)}
        assert fake.sends == 1
    finally:
        fake.close()


def test_events_written_past_the_orm_come_after_those_the_session_holds(runtime):
    """record_many on PostgreSQL runs past the ORM (one statement over arrays); an event the
    session still holds is written first, as SQLAlchemy's autoflush did, so ids keep the order of making."""
    from service.core import events

    enroll_many(runtime, 1, prefix="order")
    with runtime.sessions() as s, s.begin():
        sid = s.scalar(select(Subscriber.id))
        events.record(s, type="enrollment_completed", now=T0, subscriber_id=sid, detail="held by the session")
        events.record_many(s, [dict(type="queued", created_at=T0, subscriber_id=sid, detail=f"batch {i}")
                               for i in range(3)])
    with runtime.sessions() as s:
        details = s.scalars(select(Event.detail).where(Event.subscriber_id == sid, Event.type != "signup")
                            .order_by(Event.id)).all()
    assert details == ["held by the session", "batch 0", "batch 1", "batch 2"]


def test_events_with_a_naive_time_are_refused_on_both_paths(runtime):
    """record_many leaves the check to the path that writes: UTCDateTime on SQLite, DriverSQL on PostgreSQL."""
    from datetime import datetime

    from service.core import events

    with runtime.sessions() as s, s.begin(), pytest.raises((ValueError, SQLAlchemyError), match="naive datetime"):
        events.record_many(s, [dict(type="queued", created_at=datetime(2026, 1, 5, 12, 0), detail="naive")])


def test_a_claim_takes_expired_leases_first_then_the_oldest_due(runtime):
    """The claim is two statements (expired leases, then due messages in queue order) instead
    of one sorting every due message; together they fill one batch, a dead worker's messages first,
    even when they come last in queue order."""
    from service.dispatch.policy import PassSummary

    enroll_many(runtime, 6)
    runtime.dispatcher(batch_size=50).queue_due(T0, PassSummary())
    with runtime.sessions() as s:
        queued = list(s.scalars(select(Message.id).order_by(Message.next_attempt_at, Message.id)))
    assert len(queued) == 6
    died = queued[-2:]  # a worker that died holding the last two in queue order
    with runtime.sessions() as s, s.begin():
        s.execute(text("UPDATE messages SET status = 'sending', attempts = 1, claimed_by = 'died', "
                       "lease_until = :t, next_attempt_at = :later WHERE id IN (:a, :b)"),
                  {"t": utcnow() - timedelta(minutes=1), "later": T0 + timedelta(seconds=1),
                   "a": died[0], "b": died[1]})

    summary = PassSummary()
    claimed = runtime.dispatcher(batch_size=3, worker_id="second").claim(T0, summary)
    assert claimed == [*died, queued[0]] and summary.reclaimed == 2
    rest = runtime.dispatcher(batch_size=10, worker_id="third").claim(T0, PassSummary())
    assert rest == queued[1:4]  # nothing still leased is taken
    with runtime.sessions() as s:
        assert Counter(s.scalars(select(Message.claimed_by))) == {"second": 3, "third": 3}


@pytest.mark.postgresql_only
def test_drip_connections_plan_for_solid_state_storage_unless_the_operator_chose(postgres_database):
    """A server left at random_page_cost 4 gets 1.1 on Drip's connections (index lookups for the
    chunk-by-id statements on small tables); a value the operator set is kept."""
    from service.core.db import make_engine

    for options, expected in (("", "1.1"), ("?options=-c%20random_page_cost%3D2.5", "2.5")):
        engine = make_engine(postgres_database + options)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SHOW random_page_cost")).scalar() == expected
                conn.rollback()  # the setting is the session's, not the transaction's
                assert conn.execute(text("SHOW random_page_cost")).scalar() == expected
        finally:
            engine.dispose()
