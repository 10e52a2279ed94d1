"""The "as sent" copies: every email exactly as it was handed to the transport, kept for the operator
(issue 3), stored compactly (issue 6).

Most of an email of a campaign step is the same in every email of that step: the lines of its text and
HTML parts that hold no reader's value (mime.BodyTemplate encodes them once, as `mime.Fixed` pieces). A
copy is stored as a layout: its own bytes (headers, the lines with the reader's values, MIME framing)
and, for each fixed piece, the SHA-256 of a row of `content_chunks`, which holds that piece once. Read
back, the pieces join to the very bytes that were sent (tests compare them with what the SMTP server
received). ~29 KB per email became ~2 KB in `message_contents`; an email composed in one piece (a
step rendered in full, tracked links) is stored as its bytes, as before.

Layout format, in `message_contents.raw`: MAGIC, then records: b"L" + 4-byte big-endian length + bytes,
or b"C" + 32-byte SHA-256 of a chunk. An email never starts with a NUL byte, so bytes and layouts
cannot be confused.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import String, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from .db import DriverSQL, one_of
from .mime import Fixed
from .models import ContentChunk, MessageContent

MAGIC = b"\x00drip-as-sent-1\n"
MIN_SHARED = 256  # a fixed piece shorter than this is kept in the copy itself: a reference costs 33 bytes


class MissingChunk(LookupError):
    pass


def pack(pieces: Sequence[bytes]) -> tuple[bytes, dict[str, bytes]]:
    """(the layout of the email joined from `pieces`, {digest: bytes} of the chunks it refers to)."""
    out, chunks, literal = [MAGIC], {}, []
    for piece in pieces:
        if isinstance(piece, Fixed) and len(piece) >= MIN_SHARED:
            if literal:
                out.append(_literal(b"".join(literal)))
                literal = []
            out.append(b"C" + piece.sha256)
            chunks[piece.digest] = piece
        elif piece:
            literal.append(piece)
    if literal:
        out.append(_literal(b"".join(literal)))
    return b"".join(out), chunks


def _literal(data: bytes) -> bytes:
    return b"L" + len(data).to_bytes(4, "big") + data


def _records(layout: bytes) -> Iterable[bytes | str]:
    """A layout's pieces: bytes of its own, or the digest (str) of a chunk."""
    at = len(MAGIC)
    while at < len(layout):
        kind = layout[at:at + 1]
        if kind == b"L":
            size = int.from_bytes(layout[at + 1:at + 5], "big")
            yield layout[at + 5:at + 5 + size]
            at += 5 + size
        elif kind == b"C":
            yield layout[at + 1:at + 33].hex()
            at += 33
        else:
            raise ValueError(f"not an as-sent layout (record {kind!r} at {at})")


def store(session: Session, contents: list[dict], now: datetime) -> None:
    """Write the copies `contents` ({"c_id": message id, "raw": bytes, or the pieces of a layout}) in one
    statement, after any chunk they refer to that is not stored yet (the last attempt's copy wins)."""
    if not contents:
        return
    chunks: dict[str, bytes] = {}
    rows = []
    for item in contents:
        raw = item["raw"]
        if not isinstance(raw, bytes):
            raw, used = pack(raw)
            chunks.update(used)
        rows.append({"c_id": item["c_id"], "raw": raw})
    dialect = session.get_bind().dialect.name
    if chunks:
        known = set(session.scalars(select(ContentChunk.digest).where(
            one_of(dialect, ContentChunk.digest, chunks, String))))
        missing = [{"digest": digest, "data": bytes(data), "created_at": now}
                   for digest, data in chunks.items() if digest not in known]
        if missing:  # another worker may store the same chunk at the same moment: either row will do
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            session.execute(insert(ContentChunk).on_conflict_do_nothing(index_elements=["digest"]), missing)
    conn = session.connection()
    if dialect == "postgresql":
        _STORE_PG.all(conn, {"now": now, "ids": [r["c_id"] for r in rows], "raws": [r["raw"] for r in rows]})
        return
    insert = sqlite.insert(MessageContent)
    session.execute(insert.on_conflict_do_update(index_elements=["message_id"],
                                                 set_={"raw": insert.excluded.raw,
                                                       "created_at": insert.excluded.created_at}),
                    [{"message_id": r["c_id"], "raw": r["raw"], "created_at": now} for r in rows])


# PostgreSQL: one statement over unnested arrays, in binary (issue 6; see DriverSQL).
_STORE_PG = DriverSQL("""INSERT INTO message_contents (message_id, raw, created_at)
SELECT id, raw, :now FROM unnest(CAST(:ids AS BIGINT[]), CAST(:raws AS BYTEA[])) AS v (id, raw)
ON CONFLICT (message_id) DO UPDATE SET raw = excluded.raw, created_at = excluded.created_at""", binary=True)


def read(session: Session | Connection, stored: bytes) -> bytes:
    """The email's bytes from a stored copy (`MessageContent.raw`), its chunks read when it has any."""
    if not stored.startswith(MAGIC):
        return stored
    pieces = list(_records(stored))
    wanted = {p for p in pieces if isinstance(p, str)}
    found: Mapping[str, bytes] = {}
    if wanted:
        dialect = session.get_bind().dialect.name if isinstance(session, Session) else session.dialect.name
        found = dict(session.execute(select(ContentChunk.digest, ContentChunk.data).where(
            one_of(dialect, ContentChunk.digest, wanted, String))).all())
    missing = wanted - set(found)
    if missing:
        raise MissingChunk(f"as-sent copy refers to missing chunks {sorted(missing)[:3]}")
    return b"".join(found[p] if isinstance(p, str) else p for p in pieces)


def expand_all(conn: Connection) -> int:
    """Every layout written back as the bytes it stands for (before `content_chunks` is dropped)."""
    table = MessageContent.__table__
    n = 0
    for message_id, stored in conn.execute(select(table.c.message_id, table.c.raw)).all():
        if stored.startswith(MAGIC):
            conn.execute(update(table).where(table.c.message_id == message_id).values(raw=read(conn, stored)))
            n += 1
    return n
