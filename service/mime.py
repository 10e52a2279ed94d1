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
import re
import secrets
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
        cte = b"7bit"
    else:
        # b2a_qp keeps CRLF, adds soft breaks at 76, encodes '=', trailing blanks and a lone '.' line.
        data, cte = quoted_printable(data), b"quoted-printable"
    head = b'Content-Type: text/' + subtype.encode("ascii") + b'; charset="utf-8"\r\nContent-Transfer-Encoding: ' + cte
    return head, data


_QP_LINES: dict[bytes, bytes] = {}
_QP_LINES_MAX = 4096


def quoted_printable(data: bytes) -> bytes:
    """`binascii.b2a_qp(data, istext=True)`, exactly, for CRLF text, line by line with a cache (issue 6).

    Encoding the 29 KB coaching email took 0.13 ms, a sixth of a worker's CPU per email, though nearly
    every line is the same in every email of a step. b2a_qp encodes each line on its own once it knows
    the data's line ends are CRLF (it looks at the first one), so each line with its CRLF is encoded
    once and reused; the last two lines go through together, because the end of the data is encoded
    differently from the end of a line (tests/test_mime.py compares both ways, hypothesis included).
    0.13 -> 0.03 ms. Lines of readers' values make the cache grow, so it is emptied when it is full."""
    lines = data.split(b"\r\n")
    if len(lines) < 3:
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


def _boundary(bodies: Iterable[bytes]) -> bytes:
    """A boundary found in none of `bodies` (the 7bit ones: '=_' cannot occur in quoted-printable)."""
    while True:
        boundary = b"=_drip_" + secrets.token_hex(12).encode("ascii")
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


def multipart_alternative(headers: Iterable[tuple[str, str]], text: str, html: str) -> bytes:
    """The whole email: `headers` (already formatted values, in order), then text and HTML alternatives."""
    parts = [body_part("plain", text), body_part("html", html)]
    boundary = _boundary([body for head, body in parts if not head.endswith(b"quoted-printable")])
    out = _header_lines(headers)
    out += [b"MIME-Version: 1.0", b'Content-Type: multipart/alternative; boundary="' + boundary + b'"']
    pieces = [b"\r\n".join(out), b"\r\n\r\n"]
    for head, body in parts:
        # The CRLF before the next delimiter belongs to the delimiter (RFC 2046 5.1.1); written piece by
        # piece, so the bodies (most of the email) are copied once, by the final join.
        pieces += [b"--", boundary, b"\r\n", head, b"\r\n\r\n", body]
        if not body.endswith(b"\r\n"):
            pieces.append(b"\r\n")
    pieces += [b"--", boundary, b"--\r\n"]
    return b"".join(pieces)
