"""SQLite writers wait on an OS file lock (db._LockedConnection), woken when it is released, instead of
SQLite's sleep-and-retry busy handler."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import text

from service.core.db import _LockedConnection, make_engine


def _engine(path: Path):
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER)"))
    return engine


def test_a_second_writer_waits_for_the_first_and_then_goes_on(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "d.db")
    order: list[str] = []
    holding = threading.Event()
    release = threading.Event()

    def first() -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            holding.set()
            release.wait(10)
            order.append("first commits")

    def second() -> None:
        holding.wait(10)
        with engine.begin() as conn:
            order.append("second begins")
            conn.execute(text("INSERT INTO t VALUES (2)"))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    holding.wait(10)
    threads[1].join(0.3)  # the second writer is still waiting
    assert threads[1].is_alive() and order == []
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first commits", "second begins"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM t ORDER BY n")).scalars().all() == [1, 2]
    assert (tmp_path / "d.db.writer-lock").exists()


def test_the_lock_is_released_on_rollback_and_on_a_failed_statement(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "d.db")
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO missing_table VALUES (1)"))
    except Exception:  # noqa: S110 - the failure is the point; the lock must be free after it
        pass
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from sqlalchemy import text; "
            "from service.core.db import make_engine; e = make_engine('sqlite:///' + sys.argv[1]); "
            "c = e.connect(); c.execute(text('INSERT INTO t VALUES (3)')); c.commit(); print('written')")
    # Another process gets the lock (a lock leaked by the failed transaction would hang it: timeout).
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d.db"), str(Path(__file__).parent.parent)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "written", out.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM t")).scalars().all() == [3]


def test_a_thread_holding_the_lock_does_not_wait_for_itself(tmp_path: Path) -> None:
    """Two connections in one thread: the second skips the file lock (SQLite's busy timeout applies to
    it as before) instead of waiting forever for a lock its own thread holds. Read-only here."""
    engine = _engine(tmp_path / "d.db")
    with engine.begin() as outer:
        outer.execute(text("INSERT INTO t VALUES (1)"))
        raw = engine.raw_connection()
        try:
            assert isinstance(raw.driver_connection, _LockedConnection)
            raw.driver_connection.take_writer_lock()  # returns at once
            assert raw.driver_connection._owner is None
        finally:
            raw.close()


def test_a_lock_held_too_long_gives_sqlites_own_error(tmp_path: Path, monkeypatch) -> None:
    """A writer waits for the lock at most the busy timeout (shortened here), then gets SQLite's
    "database is locked", as it did when SQLite's busy handler waited."""
    import fcntl
    import sqlite3

    import pytest

    import service.core.db as db

    engine = _engine(tmp_path / "d.db")
    monkeypatch.setattr(db, "WRITER_LOCK_WAIT", 0.3)
    with open(tmp_path / "d.db.writer-lock", "rb") as other:  # another process's hold, as the kernel sees it
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(sqlite3.OperationalError, match="database is locked"), engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    with engine.begin() as conn:  # released: writes go through again
        conn.execute(text("INSERT INTO t VALUES (2)"))
        assert conn.execute(text("SELECT n FROM t")).scalars().all() == [2]


def test_a_lock_file_that_cannot_be_opened_falls_back_on_the_busy_timeout(tmp_path: Path, monkeypatch) -> None:
    """Another OS user's lock file (opening it fails): the connection writes without it, as before."""
    import os

    engine = _engine(tmp_path / "d.db")
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith(".writer-lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    fresh = make_engine(f"sqlite:///{tmp_path / 'd.db'}")
    with fresh.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (5)"))
    monkeypatch.undo()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM t")).scalars().all() == [5]


def test_each_database_has_its_own_lock_for_a_thread(tmp_path: Path) -> None:
    """A thread inside a transaction on one database still takes the other database's lock."""
    first, second = _engine(tmp_path / "a.db"), _engine(tmp_path / "b.db")
    with first.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        with second.begin() as other:
            other.execute(text("INSERT INTO t VALUES (2)"))
            assert other.connection.driver_connection._owner is not None


def test_wal_checkpoints_are_run_by_drip_after_the_commit_not_inside_it(tmp_path: Path, monkeypatch) -> None:
    """SQLite's automatic checkpoint ran inside the COMMIT, so the writer lock stayed taken through the
    database file's fsync; connections taking the lock turn it off and checkpoint once CHECKPOINT_ROWS
    rows were changed, after the lock is dropped. Seen from the outside: rows reach the database file
    (not only the WAL) once the count is crossed, and not before."""
    import service.core.db as db

    monkeypatch.setattr(db, "CHECKPOINT_ROWS", 4)
    monkeypatch.setitem(db._unchecked, str(tmp_path / "d.db") + ".writer-lock", 0)
    engine = make_engine(f"sqlite:///{tmp_path / 'd.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE big (b BLOB)"))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    size = (tmp_path / "d.db").stat().st_size
    blob = b"x" * 50_000
    with engine.begin() as conn:  # 3 rows (with the CREATE's 0): under the mark, the pages stay in the WAL
        for _ in range(3):
            conn.execute(text("INSERT INTO big VALUES (:b)"), {"b": blob})
    assert (tmp_path / "d.db").stat().st_size == size
    assert (tmp_path / "d.db-wal").stat().st_size > 150_000
    with engine.begin() as conn:  # the 4th row crosses it: checkpointed after this commit
        conn.execute(text("INSERT INTO big VALUES (:b)"), {"b": blob})
    assert not db._lock_holders  # and the lock was given back
    # by this process's checkpoint thread, while the committing thread went on
    _wait_for_the_database_file(tmp_path / "d.db", above=200_000)


def _wait_for_the_database_file(path: Path, *, above: int) -> None:
    """The checkpoint thread has copied pages into the database file: it grew past `above` bytes."""
    deadline = time.monotonic() + 10
    while path.stat().st_size <= above and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.stat().st_size > above


def test_the_checkpoint_thread_ends_when_idle_and_a_new_one_serves_the_next_request(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """Each database's checkpoints run on a thread of this process that ends after a quiet spell (a test
    run opens hundreds of databases) and starts again when the next commit crosses the mark."""
    import service.core.db as db

    monkeypatch.setattr(db, "CHECKPOINT_ROWS", 1)
    monkeypatch.setattr(db._Checkpointer, "IDLE_SECONDS", 0.05)
    path = str(tmp_path / "d.db")
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE big (b BLOB)"))

    def write_and_wait_for_the_database_file() -> None:
        size = Path(path).stat().st_size
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO big VALUES (:b)"), {"b": b"x" * 50_000})
        _wait_for_the_database_file(Path(path), above=size)

    def thread_serving() -> threading.Thread | None:
        checkpointer = db._Checkpointer._running.get(path)
        return checkpointer.thread if checkpointer else None

    write_and_wait_for_the_database_file()
    first = thread_serving()
    assert first is not None and first is not threading.current_thread()
    first.join(timeout=10)
    assert not first.is_alive() and thread_serving() is None  # ended after IDLE_SECONDS
    write_and_wait_for_the_database_file()  # a new thread checkpoints the next rows
    engine.dispose()


def test_a_dead_checkpoint_thread_is_replaced_and_asking_never_fails_a_commit(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint thread that died (or never started) does not stop checkpoints for good: the next
    request starts a new one; and when no thread can be started, the commit that asked still succeeds."""
    import service.core.db as db

    monkeypatch.setattr(db, "CHECKPOINT_ROWS", 1)
    path = str(tmp_path / "d.db")
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE big (b BLOB)"))
    monkeypatch.setitem(db._Checkpointer._running, path, db._Checkpointer(path))  # never started: dead
    size = Path(path).stat().st_size
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO big VALUES (:b)"), {"b": b"x" * 50_000})
    _wait_for_the_database_file(Path(path), above=size)

    def no_threads(self) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.delitem(db._Checkpointer._running, path)
    monkeypatch.setattr(threading.Thread, "start", no_threads)
    with engine.begin() as conn:  # asks, cannot get a thread, and commits all the same
        conn.execute(text("INSERT INTO big VALUES (:b)"), {"b": b"y"})
    monkeypatch.undo()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM big")).scalar() == 2
    engine.dispose()
