"""Engine and session factory. No module-level engine: callers build one from Settings.

SQLite runs as a single writer: every transaction starts with BEGIN IMMEDIATE, so a claim or an upsert
never races another process's write, and WAL keeps readers going meanwhile. PostgreSQL claims with
FOR UPDATE SKIP LOCKED (see dispatch).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _sqlite_single_writer(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size * 2)


def _sqlite_single_writer(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):  # noqa: ANN001
        # Let SQLAlchemy issue BEGIN itself (the driver's implicit BEGIN would be DEFERRED).
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # noqa: ANN001
        # Straight to the driver: this runs for every transaction, and SQLAlchemy's execution machinery
        # cost several times the statement itself (issue 6).
        conn.connection.driver_connection.execute("BEGIN IMMEDIATE")


def make_sessionmaker(settings: Settings, *, pool_size: int = 5) -> sessionmaker[Session]:
    return sessionmaker(make_engine(settings.database_url, pool_size=pool_size), expire_on_commit=False)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; every datetime we store is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class DriverSQL:
    """A statement of the signup path, run straight on the DBAPI cursor of a connection the session has
    begun, inside its transaction. SQLAlchemy's per-execution work (compilation or cache lookup, execution
    context, result wrapping) was over half a signup's database CPU on SQLite, where the statements
    themselves cost a few microseconds (issue 6). Driver errors come back as SQLAlchemy's exceptions.

    Written once with `:name` parameters (PostgreSQL's driver gets `%(name)s`), so the SQL holds no other
    colon and no `%`; values go to the driver as they are, so a datetime for a `UTCDateTime` column is
    passed through `driver_time` first.
    """

    def __init__(self, sql: str) -> None:
        if "%" in sql or "::" in sql:
            raise ValueError("DriverSQL: no % or :: in the SQL (the parameter rewrite would break them)")
        self.sql = {"sqlite": sql, "postgresql": re.sub(r":(\w+)", r"%(\1)s", sql)}

    def first(self, conn: Connection, params: Mapping[str, object]) -> tuple | None:
        """Runs the statement; its first row (RETURNING), or None."""
        sql = self.sql[conn.dialect.name]
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchone() if cursor.description else None
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error) from exc
        finally:
            cursor.close()


def driver_time(conn: Connection, value: datetime) -> datetime | str:
    """A UTC-aware datetime as `UTCDateTime` stores it: as it is on PostgreSQL; on SQLite SQLAlchemy's
    text form (naive UTC, microseconds always), so stored values keep sorting as text."""
    if conn.dialect.name == "sqlite":
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value
