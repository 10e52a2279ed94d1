"""The copies kept "as sent", stored as layouts (their own bytes plus references to shared chunks) read
back as the very bytes that were sent, on both databases, and survive a downgrade of the schema."""
from __future__ import annotations

import threading
from datetime import datetime

import pytest
from alembic import command
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import StatementError
from test_dispatch_batch import T0, enroll_many

from service.compose import as_sent
from service.compose.mime import Fixed
from service.core.migrate import alembic_config, upgrade
from service.core.models import ContentChunk, Message, MessageContent
from service.dispatch.policy import PassSummary

NOW = T0
SHARED = Fixed(b"<p>the same in every email of the step</p>\r\n" * 20)
SMALL = Fixed(b"--\r\n")  # too short to be worth a reference: kept in the copy


def _message_ids(runtime, n: int) -> list[int]:
    enroll_many(runtime, n, prefix="as-sent")
    runtime.dispatcher().queue_due(NOW, PassSummary())
    with runtime.sessions() as s:
        return list(s.scalars(select(Message.id).order_by(Message.id)))


def test_a_layout_reads_back_as_the_bytes_and_stores_its_chunks_once(runtime) -> None:
    ids = _message_ids(runtime, 3)
    emails = {pk: (b"To: r%d@example.com\r\n\r\n" % pk, SHARED, SMALL, b"Hi reader %d\r\n" % pk, SHARED) for pk in ids}
    plain = b"From: x\r\n\r\nan email composed in one piece\r\n"
    with runtime.sessions() as s, s.begin():
        as_sent.store(s, [{"c_id": pk, "raw": pieces} for pk, pieces in list(emails.items())[:2]]
                      + [{"c_id": ids[2], "raw": plain}], NOW)
    with runtime.sessions() as s, s.begin():  # a later attempt's copy replaces the first; the chunk is reused
        as_sent.store(s, [{"c_id": ids[0], "raw": emails[ids[0]]}], NOW)
    with runtime.sessions() as s:
        for pk in ids[:2]:
            stored = s.get(MessageContent, pk).raw
            assert stored.startswith(as_sent.MAGIC) and len(stored) < len(SHARED)
            assert as_sent.read(s, stored) == b"".join(emails[pk])
        assert as_sent.read(s, s.get(MessageContent, ids[2]).raw) == plain
        assert s.scalars(select(ContentChunk.digest)).all() == [SHARED.digest]


def test_a_copy_whose_chunk_is_gone_is_an_error_not_a_wrong_email(runtime) -> None:
    layout, chunks = as_sent.pack([b"head\r\n\r\n", SHARED])
    assert set(chunks) == {SHARED.digest}
    with runtime.sessions() as s, pytest.raises(as_sent.MissingChunk):
        as_sent.read(s, layout)


def test_downgrading_writes_every_layout_back_as_bytes(database_url: str, settings, request) -> None:
    from service.runtime import build_runtime

    upgrade(database_url)
    runtime = build_runtime(settings)
    try:
        ids = _message_ids(runtime, 1)
        with runtime.sessions() as s, s.begin():
            as_sent.store(s, [{"c_id": ids[0], "raw": (b"head\r\n\r\n", SHARED)}], NOW)
    finally:
        runtime.sessions.kw["bind"].dispose()
    command.downgrade(alembic_config(database_url), "0013_lean_indexes")
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(MessageContent.raw)).scalar() == b"head\r\n\r\n" + SHARED
        upgrade(database_url)
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(ContentChunk)).scalar() == 0
    finally:
        engine.dispose()


@pytest.mark.postgresql_only
def test_two_workers_storing_the_same_new_chunks_in_opposite_order_do_not_deadlock(runtime) -> None:
    """Found in review: chunks were inserted in the order the layouts named them, so two workers whose
    flushes held two new steps in opposite order waited on each other's rows (PostgreSQL aborted one)."""
    ids = _message_ids(runtime, 2)
    errors: list[BaseException] = []
    for attempt in range(5):
        chunks = [Fixed(b"<p>%d-%d</p>\r\n" % (attempt, i) * 40) for i in range(200)]
        barrier = threading.Barrier(2)

        def worker(pk: int, pieces: tuple, barrier: threading.Barrier = barrier) -> None:
            try:
                with runtime.sessions() as s, s.begin():
                    s.connection()
                    barrier.wait()
                    as_sent.store(s, [{"c_id": pk, "raw": pieces}], NOW)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(ids[0], tuple(chunks))),
                   threading.Thread(target=worker, args=(ids[1], tuple(reversed(chunks))))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, f"{len(errors)} of 5 rounds: " + str(errors[0]).splitlines()[0]


def test_a_naive_time_is_refused_as_utcdatetime_refuses_it(runtime, backend) -> None:
    """The set-based writes hand datetimes to psycopg as they are: a naive one would be read in the
    session's time zone. Refused, on both databases, and nothing is stored."""
    ids = _message_ids(runtime, 1)
    with runtime.sessions() as s, s.begin():
        if backend == "postgresql":
            s.execute(text("SET LOCAL TimeZone = 'America/New_York'"))
        with pytest.raises((ValueError, StatementError), match="naive datetime"):
            as_sent.store(s, [{"c_id": ids[0], "raw": b"From: x\r\n\r\nbody\r\n"}], datetime(2026, 1, 5, 12, 0))
    with runtime.sessions() as s:
        assert s.scalar(select(func.count()).select_from(MessageContent)) == 0


def test_the_last_copy_of_a_message_listed_twice_wins(runtime) -> None:
    ids = _message_ids(runtime, 1)
    with runtime.sessions() as s, s.begin():
        as_sent.store(s, [{"c_id": ids[0], "raw": b"From: a\r\n\r\nfirst\r\n"},
                          {"c_id": ids[0], "raw": (b"From: a\r\n\r\n", SHARED)}], NOW)
    with runtime.sessions() as s:
        assert as_sent.read(s, s.get(MessageContent, ids[0]).raw) == b"From: a\r\n\r\n" + SHARED


def test_a_cut_or_damaged_copy_is_refused() -> None:
    layout, chunks = as_sent.pack([b"head\r\n\r\n", SHARED])
    with pytest.raises(ValueError, match="cut short"):
        as_sent.read(None, layout[:-5], chunks)
    with pytest.raises(as_sent.MissingChunk):
        as_sent.read(None, layout, {SHARED.digest: SHARED + b"x"})  # not the bytes the digest names
    assert as_sent.read(None, layout, chunks) == b"head\r\n\r\n" + SHARED
