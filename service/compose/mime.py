"""A lean MIME writer: one multipart/alternative email (text + HTML) assembled as bytes.

Why not `email.message.EmailMessage`: with a header policy it costs about 3 ms to build and serialise
a 25 KB email (header objects, folding, a generator walk), ten times Jinja2's render. Drip writes one
fixed shape, so this module writes it directly, in about 0.1 ms, and the tests parse its output back
with the standard library's parser (tests/test_mime.py) to keep it honest.

What it guarantees:
- CRLF line ends everywhere; no line longer than 998 octets (RFC 5322 2.1.1);
- header values are ASCII: a display name or subject with non-ASCII characters (or anything that looks
  like an encoded word) becomes RFC 2047 encoded words of at most 75 characters, folded;
- a body part is 7bit when it is ASCII with short lines, else quoted-printable (binascii, in C, line
  by line with a cache: see `quoted_printable`), so no relay ever needs 8BITMIME;
- the boundary never occurs in a body.

It does not clean its input: callers pass header values that are already one line (compose.header_text),
and compose.check_header_block re-checks the finished header block.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import random
import re
from collections.abc import Iterable

MAX_LINE = 998
# Characters that force a display name into a quoted-string (RFC 5322 "specials" plus the quote).
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')
_ENCODED_WORD = "=?utf-8?b?{}?="
# 45 bytes of UTF-8 -> 60 base64 characters -> a 72-character encoded word (limit 75, RFC 2047 2).
_WORD_BYTES = 45


def encoded_words(text: str) -> str:
    """`text` as RFC 2047 base64 encoded words, split on character boundaries and folded with CRLF SP."""
    words, chunk = [], b""
    for ch in text:
        b = ch.encode("utf-8")
        if len(chunk) + len(b) > _WORD_BYTES:
            words.append(chunk)
            chunk = b""
        chunk += b
    if chunk:
        words.append(chunk)
    return "\r\n ".join(_ENCODED_WORD.format(base64.b64encode(w).decode("ascii")) for w in words)


def _needs_encoding(text: str) -> bool:
    return not text.isascii() or "=?" in text


def unstructured(text: str) -> str:
    """A Subject-like value: as is when plain ASCII, else encoded words."""
    return encoded_words(text) if _needs_encoding(text) else text


def phrase(name: str) -> str:
    """A display name: bare atoms, a quoted-string when it holds specials, encoded words when non-ASCII."""
    if not name:
        return ""
    if _needs_encoding(name):
        return encoded_words(name)
    if _SPECIALS.search(name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def address(name: str, addr: str) -> str:
    """`Name <addr>` (or the bare address); `addr` must already be ASCII (IDN domains in Punycode)."""
    shown = phrase(name)
    return f"{shown} <{addr}>" if shown else addr


def crlf(text: str) -> bytes:
    """UTF-8 with every line ending as CRLF (Jinja2 output and templates use bare LF)."""
    if "\r" in text:  # rare: templates and Jinja2 write bare LF, so this scan usually saves two copies
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\n", "\r\n").encode("utf-8")


def _longest_line(data: bytes) -> int:
    return max(map(len, data.split(b"\r\n")))


def body_part(subtype: str, text: str) -> tuple[bytes, bytes]:
    """(part headers, encoded body) for one text/* part."""
    data = crlf(text)
    if data.isascii() and _longest_line(data) <= MAX_LINE:
        return _part_head(subtype, b"7bit"), data
    # b2a_qp keeps CRLF, adds soft breaks at 76, encodes '=', trailing blanks and a lone '.' line.
    return _part_head(subtype, _QP), quoted_printable(data)


_QP = b"quoted-printable"


def _part_head(subtype: str, cte: bytes) -> bytes:
    return b'Content-Type: text/' + subtype.encode("ascii") + b'; charset="utf-8"\r\nContent-Transfer-Encoding: ' + cte


class Fixed(bytes):
    """Bytes that are the same in many emails (a BodyTemplate's lines without values), named by their
    SHA-256, so the "as sent" copy of an email can refer to them instead of holding them (as_sent.py),
    and canonicalized for DKIM once (compose/dkim.py)."""

    digest: str  # hex
    sha256: bytes
    relaxed: bytes | None = None  # its DKIM relaxed canonical form, once compose/dkim.py has needed it

    def __new__(cls, data: bytes) -> Fixed:
        obj = super().__new__(cls, data)
        obj.sha256 = hashlib.sha256(data).digest()
        obj.digest = obj.sha256.hex()
        return obj


class BodyTemplate:
    """`body_part` of the texts `pieces[0] + values[0] + pieces[1] + ... + pieces[-1]`, for many `values`,
    with the fixed lines encoded once.

    Line ends, UTF-8, the 7bit check and quoted-printable cost ~0.07 ms per email for the 29 KB
    coaching email, though only the few lines holding a reader's values change from one email to the
    next. Here each line without a value is encoded when the template is made (both ways: as is, for a
    7bit part, and quoted-printable); an email encodes only the lines holding values and joins the
    rest. Values holding a line break (never the case for Drip's values, which are one line) take the
    `body_part` path, so the output is `body_part`'s in every case (tests/test_mime.py, hypothesis).
    Raises ValueError for pieces it cannot plan (a CR in them, fewer than three lines)."""

    def __init__(self, subtype: str, pieces: Iterable[str]) -> None:
        self.subtype, self.pieces = subtype, tuple(pieces)
        if any("\r" in piece for piece in self.pieces):
            raise ValueError("pieces with a CR")
        lines: list[list[bytes | int]] = []  # each line: fixed bytes with value numbers between them
        line: list[bytes | int] = []
        for number, piece in enumerate(self.pieces):
            if number:
                line.append(number - 1)  # the value between the previous piece and this one
            first, *rest = crlf(piece).split(b"\r\n")
            line.append(first)
            for nxt in rest:
                lines.append(line)
                line = [nxt]
        lines.append(line)
        if len(lines) < 3:
            raise ValueError("fewer than three lines")
        fixed = [ln[0] for ln in lines if len(ln) == 1]
        self._fixed_7bit = all(ln.isascii() and len(ln) <= MAX_LINE for ln in fixed)  # type: ignore[union-attr]
        # Segments in order: a run of fixed lines as (as is, quoted-printable), or a line with values. The
        # last two lines are one segment: quoted_printable encodes the end of the data with them.
        self._segments: list[tuple[bytes, bytes] | list[bytes | int]] = []
        raw: list[bytes] = []
        for ln in lines[:-2]:
            if len(ln) == 1:
                raw.append(ln[0] + b"\r\n")  # type: ignore[operator]
                continue
            self._flush(raw)
            self._segments.append(ln)
        self._flush(raw)
        tail = [*lines[-2], b"\r\n", *lines[-1]]
        if all(isinstance(x, bytes) for x in tail):
            data = b"".join(tail)  # type: ignore[arg-type]
            self._segments.append((Fixed(data), Fixed(binascii.b2a_qp(data, istext=True))))
        else:
            self._segments.append(tail)
        self._tail = self._segments[-1]
        # Per email only the segments holding values change: where they are, and the others ready to copy.
        self._values_at = [i for i, seg in enumerate(self._segments) if not isinstance(seg, tuple)]
        self._seven = [seg[0] if isinstance(seg, tuple) else b"" for seg in self._segments]
        self._qp = [seg[1] if isinstance(seg, tuple) else b"" for seg in self._segments]

    def _flush(self, raw: list[bytes]) -> None:
        if raw:
            encoded = b"".join(binascii.b2a_qp(ln, istext=True) for ln in raw)
            self._segments.append((Fixed(b"".join(raw)), Fixed(encoded)))
            raw.clear()

    def part(self, values: list[str]) -> tuple[bytes, bytes]:
        head, pieces = self.part_pieces(values)
        return head, b"".join(pieces)

    def part_pieces(self, values: list[str]) -> tuple[bytes, list[bytes]]:
        """`part`, with the body as the pieces it is joined from (the fixed ones are `Fixed`)."""
        encoded = [value.encode("utf-8") for value in values]
        if any(b"\n" in value or b"\r" in value for value in encoded):
            head, body = body_part(self.subtype, "".join(_interleave(self.pieces, values)))
            return head, [body]
        last = len(self._segments) - 1
        segments = self._segments
        filled = [(i, b"".join([encoded[x] if isinstance(x, int) else x for x in segments[i]]))  # type: ignore[union-attr]
                  for i in self._values_at]
        seven = self._fixed_7bit and all(
            all(line.isascii() and len(line) <= MAX_LINE for line in seg.split(b"\r\n")) if i == last
            else seg.isascii() and len(seg) <= MAX_LINE for i, seg in filled)
        if seven:
            out = self._seven.copy()
            for i, seg in filled:
                out[i] = seg if i == last else seg + b"\r\n"
            return _part_head(self.subtype, b"7bit"), out
        out = self._qp.copy()
        for i, seg in filled:
            out[i] = binascii.b2a_qp(seg if i == last else seg + b"\r\n", istext=True)
        return _part_head(self.subtype, _QP), out


def _interleave(pieces: tuple[str, ...], values: list[str]) -> Iterable[str]:
    yield pieces[0]
    for value, piece in zip(values, pieces[1:], strict=True):
        yield value
        yield piece


_QP_LINES: dict[bytes, bytes] = {}
_QP_LINES_MAX = 4096


def quoted_printable(data: bytes) -> bytes:
    """`binascii.b2a_qp(data, istext=True)`, exactly, for CRLF text, line by line with a cache (but for
    one long line without a line end, which b2a_qp would break with bare LFs: CRLF here too).

    Encoding the 29 KB coaching email took 0.13 ms, a sixth of a worker's CPU per email, though nearly
    every line is the same in every email of a step. b2a_qp encodes each line on its own once it knows
    the data's line ends are CRLF (it looks at the first one), so each line with its CRLF is encoded
    once and reused; the last two lines go through together, because the end of the data is encoded
    differently from the end of a line (tests/test_mime.py compares both ways, hypothesis included).
    0.13 -> 0.03 ms. Lines of readers' values make the cache grow, so it is emptied when it is full."""
    lines = data.split(b"\r\n")
    if len(lines) < 3:
        if len(lines) == 1:  # no line end to copy: b2a_qp would break long lines with a bare LF ("=\n")
            return binascii.b2a_qp(data, istext=True).replace(b"=\n", b"=\r\n")
        return binascii.b2a_qp(data, istext=True)
    if len(_QP_LINES) > _QP_LINES_MAX:
        _QP_LINES.clear()
    cached = _QP_LINES.get
    out = [cached(line) or _qp_line(line) for line in lines[:-2]]  # an encoded line is never empty
    out.append(binascii.b2a_qp(lines[-2] + b"\r\n" + lines[-1], istext=True))
    return b"".join(out)


def _qp_line(line: bytes) -> bytes:
    encoded = _QP_LINES[line] = binascii.b2a_qp(line + b"\r\n", istext=True)
    return encoded


# Boundaries need to be absent from the bodies, not unguessable: each one is checked against them. A
# generator seeded once (from the system's randomness) spares a system call per email, and with it a wait
# for the interpreter lock behind the threads that build API requests (secrets.token_hex called os.urandom).
_BOUNDARY_RANDOM = random.Random()


def _boundary(bodies: Iterable[bytes]) -> bytes:
    """A boundary found in none of `bodies` (the 7bit ones: '=_' cannot occur in quoted-printable)."""
    while True:
        boundary = b"=_drip_%024x" % _BOUNDARY_RANDOM.getrandbits(96)
        if not any(boundary in body for body in bodies):
            return boundary


def _header_lines(headers: Iterable[tuple[str, str]]) -> list[bytes]:
    lines = []
    for name, value in headers:
        line = f"{name}: {value}".encode("ascii")  # a non-ASCII value here is a caller bug: fail loudly
        if any(len(part) > MAX_LINE for part in line.split(b"\r\n")):
            raise ValueError(f"header {name} is longer than {MAX_LINE} octets")
        lines.append(line)
    return lines


def multipart_alternative(headers: Iterable[tuple[str, str]], text: str, html: str,
                          parts: tuple[tuple[bytes, list[bytes]], tuple[bytes, list[bytes]]] | None = None) -> bytes:
    """The whole email: `headers` (already formatted values, in order), then text and HTML alternatives."""
    return b"".join(multipart_alternative_pieces(headers, text, html, parts))


def multipart_alternative_pieces(headers: Iterable[tuple[str, str]], text: str, html: str,
                                 parts: tuple[tuple[bytes, list[bytes]], tuple[bytes, list[bytes]]] | None = None
                                 ) -> list[bytes]:
    """`multipart_alternative` as the pieces it is joined from. `parts`: the text and HTML parts as
    (head, body pieces) when the caller has them already (`BodyTemplate.part_pieces`)."""
    if parts is None:
        parts = ((head, [body]) for head, body in (body_part("plain", text), body_part("html", html)))
    parts = [(head, body) for head, body in parts]
    boundary = _boundary([b"".join(body) for head, body in parts if not head.endswith(_QP)])
    out = _header_lines(headers)
    out += [b"MIME-Version: 1.0", b'Content-Type: multipart/alternative; boundary="' + boundary + b'"']
    pieces = [b"\r\n".join(out), b"\r\n\r\n"]
    for head, body in parts:
        # The CRLF before the next delimiter belongs to the delimiter (RFC 2046 5.1.1); written piece by
        # piece, so the bodies (most of the email) are copied once, by the final join.
        pieces += [b"--", boundary, b"\r\n", head, b"\r\n\r\n", *body]
        if not _ends_with_crlf(body):
            pieces.append(b"\r\n")
    pieces += [b"--", boundary, b"--\r\n"]
    return pieces


def _ends_with_crlf(pieces: list[bytes]) -> bool:
    end = b""
    for piece in reversed(pieces):
        end = piece + end
        if len(end) >= 2:
            break
    return end.endswith(b"\r\n")
