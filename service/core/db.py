"""Engine and session factory. No module-level engine: callers build one from Settings.

SQLite runs as a single writer: every transaction starts with BEGIN IMMEDIATE, so a claim or an upsert
never races another process's write, and WAL keeps readers going meanwhile; Drip's processes queue for
it on a file lock beside the database (`_LockedConnection`). PostgreSQL claims with FOR UPDATE SKIP
LOCKED (see dispatch).
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import quote

from sqlalchemy import BigInteger, Connection, Engine, any_, create_engine, event, literal
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeEngine

from service.core.config import Settings

log = logging.getLogger(__name__)


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            _create_private(path)
        connect_args: dict = {"timeout": 30, "check_same_thread": False}
        if path and path != ":memory:" and not path.startswith("file:") and "?" not in path:
            connect_args["factory"] = _writer_locked_connection(path + ".writer-lock")
        engine = create_engine(url, connect_args=connect_args)
        _sqlite_single_writer(engine)
        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size * 2)
    event.listen(engine, "connect", _planner_costs)
    return engine


def _create_private(path: str) -> None:
    """Create a new SQLite database file readable by its owner only (and its folder, when new, likewise).

    SQLite would create it with the process's umask, usually world-readable: every subscriber's address
    and consent record open to any account on the host. Its -wal and -shm files take the database
    file's permissions, so they are private too. An existing file keeps the permissions it has (the
    operator may have chosen them); `drip doctor` is the place to point at a readable one."""
    from pathlib import Path

    if path.startswith("file:") or "?" in path:
        return
    db_path = Path(path)
    if not db_path.parent.exists():
        db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)  # an empty file is an empty SQLite database


def _planner_costs(dbapi_connection, _record) -> None:
    """PostgreSQL's default random_page_cost (4) models spinning disks. With it the planner
    answers Drip's hot statements (a chunk's messages by id, joined to their readers and enrollments;
    the outcome UPDATEs over unnested ids) by reading whole tables and hashing them, as long as those
    tables hold up to ~10,000 rows: ~1 ms per statement instead of a few hundred index lookups. A server left at
    the default gets 1.1 on Drip's own connections, the value PostgreSQL's documentation gives for
    solid-state storage; a server whose operator chose another value keeps it."""
    with dbapi_connection.cursor() as cur:
        cur.execute("SELECT set_config('random_page_cost', '1.1', false) "
                    "WHERE current_setting('random_page_cost') = '4'")
    dbapi_connection.commit()


def _sqlite_single_writer(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        # Let SQLAlchemy issue BEGIN itself (the driver's implicit BEGIN would be DEFERRED).
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        # Straight to the driver: this runs for every transaction, and SQLAlchemy's execution machinery
        # cost several times the statement itself.
        _begin_sqlite_write(conn.connection.driver_connection)


def _begin_sqlite_write(driver: sqlite3.Connection) -> None:
    """The writer lock (when the connection takes it), then BEGIN IMMEDIATE."""
    if isinstance(driver, _LockedConnection):
        driver.take_writer_lock()
    try:
        driver.execute("BEGIN IMMEDIATE")
    except BaseException:
        if isinstance(driver, _LockedConnection):
            driver.drop_writer_lock()
        raise


# (lock file, thread) pairs of this process holding a database's writer lock through some connection
_lock_holders: set[tuple[str, int]] = set()
# Per lock file: rows this process changed since it last checkpointed that database (_LockedConnection)
_unchecked: dict[str, int] = {}
CHECKPOINT_ROWS = 1600  # a new signup changes 4 rows in ~13 WAL pages; an email sent 4 rows in more
WRITER_LOCK_WAIT = 30.0  # seconds, as the busy timeout: then "database is locked", as SQLite says it


class _LockedConnection(sqlite3.Connection):
    """A sqlite3 connection that takes an OS file lock (flock on `<database>.writer-lock`) before BEGIN
    IMMEDIATE and drops it after COMMIT or ROLLBACK.

    SQLite's own busy handler waits for a locked database by sleeping (1, 2, 5, 10 ... ms between
    tries), so two processes writing at once (gunicorn's workers, `drip worker`) spent part of every
    busy moment asleep with the lock already free (docs/performance.md, "Signups"). Here a waiter tries
    again every 20-100 us, up to the busy timeout, then gets SQLite's "database is locked" as before;
    the kernel drops the lock of a process that dies. Processes that do not take it (the sqlite3 shell,
    a backup) still meet SQLite's busy timeout, and so does a connection whose lock file cannot be
    opened (another OS user's file) or whose thread already holds this database's lock through
    another connection (it does not wait for itself)."""

    lock_path: str
    _lock_file = None  # the open lock file (closed with the connection, or by the garbage collector)
    _owner: tuple[str, int] | None = None
    _changes_seen = 0  # this connection's total_changes when it last counted them toward a checkpoint

    def take_writer_lock(self) -> None:
        key = (self.lock_path, threading.get_ident())
        if key in _lock_holders or (lock := self._open_lock()) is None:
            return
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _wait_for_lock(lock.fileno())
        self._owner = key
        _lock_holders.add(key)

    def _open_lock(self):
        if self._lock_file is None:
            try:  # flock needs no write access: another OS user sharing the database can open it too
                mode = os.stat(self.lock_path.removesuffix(".writer-lock")).st_mode & 0o666
            except OSError:
                mode = 0o644
            try:
                fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, mode)
            except OSError as exc:
                log.warning("cannot open %s (%s); SQLite's busy timeout applies", self.lock_path, exc)
                return None
            self._lock_file = os.fdopen(fd, "rb", buffering=0)
            # Checkpoints are ours from now on, run after the lock is dropped (see `_checkpoint`).
            self.execute("PRAGMA wal_autocheckpoint=0")
        return self._lock_file

    def drop_writer_lock(self) -> None:
        if self._owner is not None:
            _lock_holders.discard(self._owner)
            self._owner = None
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)

    def commit(self) -> None:
        self._end(super().commit)

    def rollback(self) -> None:
        self._end(super().rollback)

    def _end(self, finish) -> None:
        """COMMIT or ROLLBACK, then the lock is dropped once no transaction is open (also if it failed),
        then, now and then, a checkpoint."""
        try:
            finish()
        finally:
            if not self.in_transaction:
                self.drop_writer_lock()
        if self._lock_file is not None:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """SQLite's automatic checkpoint (every 1000 pages of WAL) runs inside the COMMIT that crosses
        the mark, so it ran while this connection still held the writer lock: every ~70 signups one of
        them held it ~4 ms, most of it the database file's fsync, while every other writer waited
        for it. Connections taking the lock turn it off and ask for one instead once this process
        has changed CHECKPOINT_ROWS rows since its last one (about 5,000 WAL pages, ~20 MB, of
        signups): a PASSIVE checkpoint, which never blocks a writer or waits for one, run by this
        process's checkpoint thread (`_Checkpointer`), so the commit that crossed the mark returns at once.
        Every checkpoint copies each page changed since the last one once, however often it changed, so
        a longer interval copies the pages every signup touches (each table's and index's last page)
        fewer times: 1,600 rows instead of 400 (SQLite's own 1,000 pages) took its share of a signup's
        CPU from ~30 to ~21 us."""
        changes = self.total_changes
        if changes == self._changes_seen:
            return
        pending = _unchecked.get(self.lock_path, 0) + changes - self._changes_seen
        self._changes_seen = changes
        if pending < CHECKPOINT_ROWS:
            _unchecked[self.lock_path] = pending
            return
        _unchecked[self.lock_path] = 0
        _Checkpointer.ask(self.lock_path.removesuffix(".writer-lock"))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.drop_writer_lock()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None


class _Checkpointer:
    """PASSIVE checkpoints of one database file for this process, on a thread of their own with a
    connection of their own, opened for each checkpoint. The request whose commit asked for one does not
    wait while pages are copied into the database file and both files are synced (a signup's p99 under
    `bench/signup.py` was 21-23 ms with the checkpoint inside the request, 29 ms once checkpoints came
    four times rarer and so took longer). Asked while one runs, it runs once more after it. The
    thread ends after IDLE_SECONDS without a request (a test run opens hundreds of databases) and a new
    one starts on the next; a forked child gets its own. A daemon: a process that exits mid-checkpoint
    leaves the WAL as it was, and the next checkpoint takes its pages."""

    IDLE_SECONDS = 30.0
    _running: dict[str, _Checkpointer] = {}  # database path: the thread serving it in this process
    _guard = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        self.wanted = threading.Event()
        self.thread = threading.Thread(target=self._run, name="drip-wal-checkpoint", daemon=True)

    @classmethod
    def ask(cls, path: str) -> None:
        """Never raises: the commit that asks has already succeeded."""
        with cls._guard:
            checkpointer = cls._running.get(path)
            if checkpointer is None or not checkpointer.thread.is_alive():
                checkpointer = cls(path)
                try:
                    checkpointer.thread.start()
                except RuntimeError as exc:  # no thread to be had: the next commit past the mark asks again
                    log.warning("cannot start the WAL checkpoint thread: %s", exc)
                    return
                cls._running[path] = checkpointer
            checkpointer.wanted.set()  # under the guard: the thread cannot be deciding to end meanwhile

    @classmethod
    def _forget_after_fork(cls) -> None:
        """In a forked child: the parent's threads are not there, and its guard may have been held."""
        cls._running = {}
        cls._guard = threading.Lock()

    def _run(self) -> None:
        while True:
            if not self.wanted.wait(self.IDLE_SECONDS):
                with self._guard:
                    if not self.wanted.is_set():
                        if self._running.get(self.path) is self:
                            del self._running[self.path]
                        return
            self.wanted.clear()
            try:  # mode=rw: a database deleted meanwhile is not created again, empty
                conn = sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True, timeout=WRITER_LOCK_WAIT,
                                       isolation_level=None)
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                finally:
                    conn.close()
            except Exception as exc:
                log.warning("WAL checkpoint failed: %s", exc)


os.register_at_fork(after_in_child=_Checkpointer._forget_after_fork)


def _wait_for_lock(fd: int) -> None:
    """Another connection holds the writer lock: try again every 20-100 us (flock has no timed wait)
    until it is ours, or raise SQLite's own error after WRITER_LOCK_WAIT seconds."""
    deadline = time.monotonic() + WRITER_LOCK_WAIT
    pause = 0.00002
    while True:
        time.sleep(pause)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError("database is locked") from None
            pause = min(pause * 2, 0.0001)


def _writer_locked_connection(lock_path: str) -> type[_LockedConnection]:
    return type("WriterLockedConnection", (_LockedConnection,), {"lock_path": lock_path})


def make_sessionmaker(settings: Settings, *, pool_size: int = 5) -> sessionmaker[Session]:
    return sessionmaker(make_engine(settings.database_url, pool_size=pool_size), expire_on_commit=False)


def one_of(dialect: str, column, values: Iterable, element_type: type[TypeEngine] = BigInteger):
    """`column IN (values)`, written on PostgreSQL as `column = ANY(:array)`: one parameter, so
    the statement's text is the same for every batch and psycopg parses it once; an IN-list of 100-200
    ids was rendered and parsed anew for every batch, ~0.5 ms of a worker's CPU each time."""
    if dialect == "postgresql":
        return column == any_(literal(list(values), ARRAY(element_type)))
    return column.in_(list(values))


def utcnow() -> datetime:
    return datetime.now(UTC)


class DriverSQL:
    """A statement of the signup path, run straight on the DBAPI cursor of a connection the session has
    begun, inside its transaction. SQLAlchemy's per-execution work (compilation or cache lookup, execution
    context, result wrapping) was over half a signup's database CPU on SQLite, where the statements
    themselves cost a few microseconds. Driver errors come back as SQLAlchemy's exceptions.

    Written once with `:name` parameters (PostgreSQL's driver gets `%(name)s`), so the SQL holds no other
    colon and no `%`; values go to the driver as they are, so a datetime for a `UTCDateTime` column is
    passed through `driver_time` first.
    """

    def __init__(self, sql: str, *, binary: bool = False) -> None:
        if "%" in sql or "::" in sql:
            raise ValueError("DriverSQL: no % or :: in the SQL (the parameter rewrite would break them)")
        # binary: psycopg sends every parameter in PostgreSQL's binary format (`%(name)b`). For arrays it
        # is the one that scales: a list of 100 emails of 29 KB as text is a hex-escaped array literal
        # (~0.5 ms of CPU per element on each side), and a list of ints or strings costs ~5x more as text.
        self.sql = {"sqlite": sql, "postgresql": re.sub(r":(\w+)", r"%(\1)b" if binary else r"%(\1)s", sql)}
        self.binary = binary

    def first(self, conn: Connection | DriverTransaction, params: Mapping[str, object]) -> tuple | None:
        """Runs the statement; its first row (RETURNING), or None."""
        rows = self._run(conn, params, many=False)
        return rows[0] if rows else None

    def all(self, conn: Connection | DriverTransaction, params: Mapping[str, object]) -> list[tuple]:
        """Runs the statement; all its rows (RETURNING), or [] when it returns none."""
        return self._run(conn, params, many=True)

    def _run(self, conn: Connection | DriverTransaction, params: Mapping[str, object], *, many: bool) -> list[tuple]:
        sql = self.sql[conn.dialect.name]
        if self.binary:
            _refuse_naive(params)
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(sql, params)
            if cursor.description is None:
                return []
            if many:
                return cursor.fetchall()
            row = cursor.fetchone()
            return [] if row is None else [row]
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error) from exc
        finally:
            cursor.close()


class DriverTransaction:
    """What DriverSQL needs of a connection (`dialect`, `connection.driver_connection`), for a transaction
    run straight on a pooled DBAPI connection: `driver_transaction`."""

    __slots__ = ("connection", "dialect")

    def __init__(self, connection, dialect) -> None:
        self.connection = connection  # the pool's connection: `.driver_connection` is the DBAPI one
        self.dialect = dialect


@contextmanager
def driver_transaction(engine: Engine) -> Iterator[DriverTransaction]:
    """One transaction of DriverSQL statements on a connection from the engine's pool, begun and
    committed on the driver itself, as the engine would (SQLite: writer lock and BEGIN IMMEDIATE;
    PostgreSQL: the driver's implicit BEGIN); rolled back if the block raises. A signup on SQLite spent
    ~14 us in SQLAlchemy's Connection and transaction objects around its four statements."""
    driver_error = engine.dialect.loaded_dbapi.Error
    pooled = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            try:
                _begin_sqlite_write(pooled.driver_connection)
            except driver_error as exc:  # "database is locked" after the busy timeout, as the engine says it
                raise DBAPIError.instance("BEGIN IMMEDIATE", None, exc, driver_error) from exc
        try:
            yield DriverTransaction(pooled, engine.dialect)
        except BaseException:
            _roll_back(pooled)
            raise
        try:
            pooled.driver_connection.commit()
        except driver_error as exc:
            _roll_back(pooled)
            raise DBAPIError.instance("COMMIT", None, exc, driver_error) from exc
    finally:
        pooled.close()  # back to the pool, or closed if invalidated


def _roll_back(pooled) -> None:
    """Roll back after a failure without hiding it: a connection that cannot even roll back (lost,
    closed) is logged and discarded from the pool, and the first error is the one raised."""
    try:
        pooled.driver_connection.rollback()
    except Exception as exc:
        log.warning("rollback failed (%s); the connection is discarded", exc)
        pooled.invalidate()


def flushed_connection(session: Session) -> Connection:
    """The session's connection for statements run past the ORM (DriverSQL), after the session has
    written what it holds, as SQLAlchemy's own execute() would have (autoflush), so those statements
    see it and rows keep the order they were made in."""
    if session.new or session.dirty or session.deleted:
        session.flush()
    return session.connection()


def _refuse_naive(params: Mapping[str, object]) -> None:
    """As `UTCDateTime` does: a naive datetime would be read in the session's time zone. Values and
    the elements of list values (the arrays of set-based writes) are checked."""
    for value in params.values():
        items = value if isinstance(value, list) else (value,)
        if any(isinstance(item, datetime) and item.tzinfo is None for item in items):
            raise ValueError("naive datetime given; Drip stores UTC-aware datetimes only")


def driver_time(conn: Connection | DriverTransaction | str, value: datetime) -> datetime | str:
    """A UTC-aware datetime as `UTCDateTime` stores it: as it is on PostgreSQL; on SQLite SQLAlchemy's
    text form (naive UTC, microseconds always), so stored values keep sorting as text. `conn` is a
    connection or a dialect name."""
    if (conn if isinstance(conn, str) else conn.dialect.name) == "sqlite":
        # = strftime("%Y-%m-%d %H:%M:%S.%f") for years 1000-9999, in C (strftime's %f is done in Python:
        # 6 us, twice a signup)
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return value
