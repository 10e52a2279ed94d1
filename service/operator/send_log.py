"""Read models for the operator: the send log with filters and keyset paging (newest first)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Text, and_, case, cast, func, or_, select
from sqlalchemy.orm import Session

from service.core.models import MAX_ID, MESSAGE_STATUSES, Message, Subscriber, UTCDateTime
from service.core.spreadsheet import FORMULA_STARTS, safe_cell

MAX_LIMIT = 500


@dataclass(frozen=True)
class MessageFilter:
    status: str | None = None
    campaign: str | None = None
    step: str | None = None
    email: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None  # keyset cursor: messages with a smaller id
    limit: int = 50

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> MessageFilter:
        """Lenient parsing for pages; the API validates strictly with `parse_api_args`."""
        def opt(name: str) -> str | None:
            # Drop control characters (API fuzzing sends them); PostgreSQL refuses NUL in text parameters.
            value = "".join(ch for ch in (args.get(name) or "") if ch >= " " and ch != "\x7f").strip()
            return value[:320] or None

        def num(name: str, default: int | None) -> int | None:
            try:
                value = int(args.get(name, ""))
            except ValueError:
                return default
            # Past 64 bits the database driver overflows (API fuzzing sends such values); treat as absent.
            return value if 0 <= value < 2**62 else default

        status = opt("status")
        return cls(status=status if status in MESSAGE_STATUSES else None, campaign=opt("campaign"),
                   step=opt("step"), email=opt("email"), since=_date(opt("since")),
                   until=_date(opt("until"), end_of_day=True),
                   before=num("before", None), limit=max(1, min(MAX_LIMIT, num("limit", 50) or 50)))

    def query_args(self, **changes: object) -> dict:
        values = {k: v for k, v in asdict(self).items() if v not in (None, "")}
        values.update(changes)
        if isinstance(values.get("since"), datetime):
            values["since"] = values["since"].date().isoformat()
        if isinstance(values.get("until"), datetime):  # stored as the next midnight (see _date)
            values["until"] = (values["until"] - timedelta(microseconds=1)).date().isoformat()
        return {k: v for k, v in values.items() if v is not None}


def _date(text: str | None, *, end_of_day: bool = False) -> datetime | None:
    """A UTC moment from ISO text. A bare date given as `until` means "through that day": the next midnight."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
        if end_of_day and len(text) == 10:
            value += timedelta(days=1)
    except (ValueError, OverflowError):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class MessagePage:
    rows: list[Message]
    next_before: int | None


def address_prefix(session: Session, column, text: str):
    """`column` (a lower-cased address) starts with `text`, as an index range on either database. The
    console's address filters use this prefix rule rather than a substring: "ann@" or "ann@example.org"
    is an index range over the subscribers, while a leading wildcard reads every row. (A trigram index
    would find any fragment, but PostgreSQL only, and it is a large index to keep on every signup.)"""
    folded = text.strip().lower()
    if session.get_bind().dialect.name == "postgresql":
        # The default escape character is the backslash; an explicit ESCAPE clause would hide the prefix
        # from the planner. The text_pattern_ops index serves it under any collation.
        return column.like(_escape_like(folded) + "%")
    # SQLite: binary order, so "starts with" is the range [text, text with its last character + 1).
    bound = folded[:-1] + chr(ord(folded[-1]) + 1) if folded and ord(folded[-1]) < 0x10FFFF else None
    return and_(column >= folded, column < bound) if bound else column >= folded


def _filtered(session: Session, q, flt: MessageFilter):
    """`q` narrowed by the filter. Each filter has its index: an address through the subscribers' address
    (then their messages by subscriber), a date range by (created_at, id), campaign and step by
    (campaign, step_key, id)."""
    if flt.status:
        q = q.where(Message.status == flt.status)
    if flt.campaign:
        q = q.where(Message.campaign == flt.campaign)
    if flt.step:
        q = q.where(Message.step_key == flt.step)
    if flt.email:
        q = q.where(Message.subscriber_id.in_(
            select(Subscriber.id).where(address_prefix(session, Subscriber.email_key, flt.email))))
    if flt.since:
        q = q.where(Message.created_at >= flt.since)
    if flt.until:
        q = q.where(Message.created_at < flt.until)
    return q


def list_messages(session: Session, flt: MessageFilter) -> MessagePage:
    q = _filtered(session, select(Message), flt)
    if flt.since or flt.until:
        rows, next_before = _page_by_time(session, q, before=flt.before, limit=flt.limit)
    else:
        rows, next_before = page_by_id(session, q, Message.id, before=flt.before, limit=flt.limit)
    return MessagePage(rows=rows, next_before=next_before)


def _time_cursor(session: Session, query, before: int | None):
    """Below the message `before` in (created_at, id) order."""
    if not before:
        return query
    cursor = session.execute(select(Message.created_at, Message.id).where(Message.id == before)).first()
    if cursor is None:  # a cursor naming no message (deleted, or made up): as id order would have it
        return query.where(Message.id < before)
    return query.where(or_(Message.created_at < cursor.created_at,
                           and_(Message.created_at == cursor.created_at, Message.id < cursor.id)))


def _page_by_time(session: Session, query, *, before: int | None, limit: int) -> tuple[list, int | None]:
    """A date range, newest first in (created_at, id) order: the index on those columns reaches the range
    at once, where id order walked back from the newest message to it. The cursor is still a message id:
    the page goes on below that message's (created_at, id)."""
    query = _time_cursor(session, query, before)
    rows = list(session.scalars(query.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, rows[-1].id if more and rows else None


# -- CSV export --------------------------------------------------------------------------------------------
EXPORT_PAGE = 5000
_EXPORT_COLUMNS = (Message.id, Message.created_at, Message.sent_at, Message.to_email, Message.campaign,
                   Message.step_key, Message.status, Message.attempts, Message.subject, Message.last_error,
                   Message.message_id)


def export_pages(sessions, flt: MessageFilter, *, page: int = EXPORT_PAGE):
    """The whole filtered log as CSV rows (lists of text, CSV_COLUMNS order), yielded a page at a time.

    Keyset pages of plain column tuples (no ORM objects): each page is one index range that starts where
    the last one stopped, so the export runs at the database's pace and the memory stays one page. Each
    page is its own short transaction (`sessions` makes a session per page), ended before the rows are
    handed on: on SQLite a transaction holds the write lock, and a slow download must not stall the
    dispatcher."""
    by_time = bool(flt.since or flt.until)
    before = flt.before
    while True:
        with sessions() as session:
            q = _filtered(session, select(*_EXPORT_COLUMNS), flt)
            if by_time:
                q = _time_cursor(session, q, before).order_by(Message.created_at.desc(), Message.id.desc())
            else:
                q = (q.where(Message.id < before) if before else q).order_by(Message.id.desc())
            rows = session.execute(q.limit(page)).all()
        if not rows:
            return
        yield [_export_row(r) for r in rows]
        if len(rows) < page:
            return
        before = rows[-1][0]


# Columns whose text can never start with a character of FORMULA_STARTS: numbers that are never negative,
# times (a year's digits first), and keys (campaign.KEY_RE, status words: a letter or digit first). COPY
# skips the formula guard for them; to_email, subject, last_error and message_id keep it.
_NO_FORMULA = frozenset({"id", "attempts", "created_at", "sent_at", "campaign", "step_key", "status"})


def _pg_text(column):
    """PostgreSQL: a column as the text `_export_row` makes of it (ISO 8601 times with +00:00, the formula
    guard of `safe_cell`, the same FORMULA_STARTS), so COPY writes what the Python path writes.

    The formatting is most of an export's time: one to_char per time (the microseconds only when there
    are some, as Python's isoformat does), and the guard only on the columns where it can apply."""
    if isinstance(column.type, UTCDateTime):
        utc = func.timezone("UTC", column)
        value = case((func.date_trunc("second", utc) == utc,
                      func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"')),
                     else_=func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'))
    else:
        value = cast(column, Text)
    if column.key in _NO_FORMULA:
        return value
    return case((func.left(value, 1).in_(FORMULA_STARTS), "'" + value), else_=value)


def copy_csv(session: Session, flt: MessageFilter, write, *, progress=None) -> int:
    """PostgreSQL: the whole filtered log as CSV rows (no header) through COPY, written as the database
    produces them: no Python per row, so the export runs at the database's speed. One statement, one
    snapshot: right for a command-line export; the web's download, which a slow client may hold open, goes
    by keyset pages instead. `progress(rows so far)` hears about every megabyte. Returns the rows written.
    The CSV is the Python path's but for an empty text (quoted here) and the line ends (newlines)."""
    q = _filtered(session, select(*(_pg_text(c).label(c.key) for c in _EXPORT_COLUMNS)), flt)
    if flt.before:
        q = _time_cursor(session, q, flt.before) if (flt.since or flt.until) else q.where(Message.id < flt.before)
    by_time = (Message.created_at.desc(), Message.id.desc()) if (flt.since or flt.until) else (Message.id.desc(),)
    compiled = q.order_by(*by_time).compile(dialect=session.get_bind().dialect,
                                            compile_kwargs={"render_postcompile": True})
    raw = session.connection().connection.driver_connection
    rows = pending = 0
    batch: list[bytes] = []

    def flush() -> None:
        nonlocal rows, pending
        data = b"".join(batch)
        batch.clear()
        write(data)
        rows += data.count(b"\n")  # a quoted field may hold a newline: only for progress
        pending = 0
        if progress:
            progress(rows)

    # libpq hands COPY's output over a row at a time: written and counted a megabyte at a time instead, so
    # the Python per row is one append.
    with raw.cursor() as cur, cur.copy(f"COPY ({compiled.string}) TO STDOUT WITH (FORMAT csv)",
                                       compiled.params) as copy:
        for chunk in copy:
            batch.append(bytes(chunk))
            pending += len(chunk)
            if pending >= 1 << 20:
                flush()
        flush()
    return cur.rowcount if cur.rowcount is not None and cur.rowcount >= 0 else rows


def _export_row(r) -> list[str]:
    return ["" if v is None else safe_cell(v.isoformat() if isinstance(v, datetime) else str(v)) for v in r]


def page_by_id(session: Session, query, id_column, *, before: int | None, limit: int) -> tuple[list, int | None]:
    """Newest first, `limit` rows below the cursor `before`; the next cursor, or None on the last page."""
    if before:
        query = query.where(id_column < before)
    rows = list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, rows[-1].id if more and rows else None


def get_message(session: Session, message_id: int) -> Message | None:
    return session.get(Message, message_id) if 0 < message_id <= MAX_ID else None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


CSV_COLUMNS = ("id", "created_at", "sent_at", "to", "campaign", "step", "status", "attempts", "subject",
               "last_error", "message_id")


def csv_row(m: Message) -> list[str]:
    d = message_dict(m)
    return ["" if d.get(c) is None else safe_cell(str(d[c])) for c in CSV_COLUMNS]


def message_dict(m: Message) -> dict:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": m.id, "campaign": m.campaign, "step": m.step_key, "to": m.to_email, "status": m.status,
        "subject": m.subject, "attempts": m.attempts, "last_error": m.last_error, "message_id": m.message_id,
        "provider_message_id": m.provider_message_id, "created_at": iso(m.created_at), "sent_at": iso(m.sent_at),
        "next_attempt_at": iso(m.next_attempt_at) if m.status in ("queued", "deferred") else None,
        "updated_at": iso(m.updated_at),
    }
