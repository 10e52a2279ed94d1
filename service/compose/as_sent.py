"""The "as sent" copies: every email exactly as it was handed to the transport, kept so the operator
can see what a reader received, stored compactly.

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

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import String, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from service.compose.mime import Fixed
from service.core.db import DriverSQL, flushed_connection, one_of
from service.core.models import ContentChunk, MessageContent

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
        if kind == b"L" and at + 5 <= len(layout):
            size = int.from_bytes(layout[at + 1:at + 5], "big")
            end = at + 5 + size
        elif kind == b"C":
            end = at + 33
        else:
            end = len(layout) + 1
        if end > len(layout):
            raise ValueError(f"not an as-sent layout (record {kind!r} at {at} is cut short or unknown)")
        yield layout[at + 5:end] if kind == b"L" else layout[at + 1:end].hex()
        at = end


def store(session: Session, contents: list[dict], now: datetime) -> None:
    """Write the copies `contents` ({"c_id": message id, "raw": bytes, or the pieces of a layout}) in one
    statement, after any chunk they refer to that is not stored yet (the last attempt's copy wins)."""
    if not contents:
        return
    chunks: dict[str, bytes] = {}
    last: dict[int, bytes] = {}  # one row per message, the last copy given (one INSERT cannot touch a row twice)
    for item in contents:
        raw = item["raw"]
        if not isinstance(raw, bytes):
            raw, used = pack(raw)
            chunks.update(used)
        last[item["c_id"]] = raw
    rows = [{"c_id": c_id, "raw": raw} for c_id, raw in last.items()]
    dialect = session.get_bind().dialect.name
    if chunks:
        known = set(session.scalars(select(ContentChunk.digest).where(
            one_of(dialect, ContentChunk.digest, chunks, String))))
        # In digest order: two workers storing the same new chunks take their row locks in one order,
        # so neither waits for the other in the opposite order (a deadlock, found in review).
        missing = [{"digest": digest, "data": bytes(data), "created_at": now}
                   for digest, data in sorted(chunks.items()) if digest not in known]
        if missing:  # another worker may store the same chunk at the same moment: either row will do
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            session.execute(insert(ContentChunk).on_conflict_do_nothing(index_elements=["digest"]), missing)
    conn = flushed_connection(session)
    if dialect == "postgresql":
        _STORE_PG.all(conn, {"now": now, "ids": [r["c_id"] for r in rows], "raws": [r["raw"] for r in rows]})
        return
    insert = sqlite.insert(MessageContent)
    session.execute(insert.on_conflict_do_update(index_elements=["message_id"],
                                                 set_={"raw": insert.excluded.raw,
                                                       "created_at": insert.excluded.created_at}),
                    [{"message_id": r["c_id"], "raw": r["raw"], "created_at": now} for r in rows])


# PostgreSQL: one statement over unnested arrays, in binary (see DriverSQL).
_STORE_PG = DriverSQL("""INSERT INTO message_contents (message_id, raw, created_at)
SELECT id, raw, :now FROM unnest(CAST(:ids AS BIGINT[]), CAST(:raws AS BYTEA[])) AS v (id, raw)
ON CONFLICT (message_id) DO UPDATE SET raw = excluded.raw, created_at = excluded.created_at""", binary=True)


def read(session: Session | Connection, stored: bytes, chunks: Mapping[str, bytes] | None = None) -> bytes:
    """The email's bytes from a stored copy (`MessageContent.raw`), its chunks read when it has any
    (from `chunks` when given). MissingChunk when one is gone; each chunk is checked against its SHA-256."""
    if not stored.startswith(MAGIC):
        return stored
    pieces = list(_records(stored))
    wanted = {p for p in pieces if isinstance(p, str)}
    found: Mapping[str, bytes] = chunks if chunks is not None else {}
    if wanted and chunks is None:
        dialect = session.get_bind().dialect.name if isinstance(session, Session) else session.dialect.name
        found = dict(session.execute(select(ContentChunk.digest, ContentChunk.data).where(
            one_of(dialect, ContentChunk.digest, wanted, String))).all())
    missing = {d for d in wanted if d not in found or hashlib.sha256(found[d]).hexdigest() != d}
    if missing:
        raise MissingChunk(f"as-sent copy refers to missing or damaged chunks {sorted(missing)[:3]}")
    return b"".join(found[p] if isinstance(p, str) else p for p in pieces)


def expand_all(conn: Connection) -> int:
    """Every layout written back as the bytes it stands for (before `content_chunks` is dropped): the
    chunks read once (a few per step version), the layouts 200 at a time, plain copies never read. Stop the
    workers first: a copy stored as a layout after this ran would refer to chunks that are gone."""
    table = MessageContent.__table__
    chunks = dict(conn.execute(select(ContentChunk.digest, ContentChunk.data)).all())
    ids = list(conn.scalars(select(table.c.message_id).where(
        func.substr(table.c.raw, 1, len(MAGIC)) == MAGIC).order_by(table.c.message_id)))
    for start in range(0, len(ids), 200):  # 200 copies in memory at a time
        batch = conn.execute(select(table.c.message_id, table.c.raw).where(
            table.c.message_id.in_(ids[start:start + 200]))).all()
        conn.execute(update(table).where(table.c.message_id == bindparam("m_id")).values(raw=bindparam("bytes")),
                     [{"m_id": m, "bytes": read(conn, stored, chunks)} for m, stored in batch])
    return len(ids)
