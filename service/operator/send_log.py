"""Read models for the operator: the send log with filters and keyset paging (newest first)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import MAX_ID, MESSAGE_STATUSES, Message
from service.core.spreadsheet import safe_cell

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


def list_messages(session: Session, flt: MessageFilter) -> MessagePage:
    q = select(Message)
    if flt.status:
        q = q.where(Message.status == flt.status)
    if flt.campaign:
        q = q.where(Message.campaign == flt.campaign)
    if flt.step:
        q = q.where(Message.step_key == flt.step)
    if flt.email:
        q = q.where(Message.to_email.ilike(f"%{_escape_like(flt.email)}%", escape="\\"))
    if flt.since:
        q = q.where(Message.created_at >= flt.since)
    if flt.until:
        q = q.where(Message.created_at < flt.until)
    rows, next_before = page_by_id(session, q, Message.id, before=flt.before, limit=flt.limit)
    return MessagePage(rows=rows, next_before=next_before)


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
