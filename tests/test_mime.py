"""The lean MIME writer round-trips through the standard library's parser for tricky inputs."""
from __future__ import annotations

import email
import email.policy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.compose import mime

TRICKY = [
    ("Zoë Ångström-Øre", "Ünïcödé sübject ✓ with emoji 🧘‍♀️ and more words to make it longer than one encoded word"),
    ('Dr. "Bob" O\'Neil, Jr.', "Plain = signs == and =?not-an-encoded-word?= in a subject"),
    ("", "x" * 240),
    ("日本語の名前", "日本語の件名です。" * 8),
]


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def assert_wire_form(raw: bytes) -> None:
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


@pytest.mark.parametrize(("name", "subject"), TRICKY)
def test_headers_round_trip(name: str, subject: str) -> None:
    """Non-ASCII names and subjects, quotes, commas and lookalike encoded words decode to exactly what was given."""
    raw = mime.multipart_alternative(
        [("From", mime.address("Coach Søfia", "sofia@example.org")), ("To", mime.address(name, "r@example.com")),
         ("Subject", mime.unstructured(subject))], "hello\n", "<p>hello</p>\n")
    assert_wire_form(raw)
    msg = parse(raw)
    assert msg["Subject"] == subject
    [to] = msg["To"].addresses
    assert (to.display_name, to.addr_spec) == (name, "r@example.com")
    assert msg["From"].addresses[0].display_name == "Coach Søfia"
    assert msg.defects == [] and msg["To"].defects == ()
    words = re.findall(rb"=\?utf-8\?b\?[^?]*\?=", raw.split(b"\r\n\r\n", 1)[0])
    assert all(len(w) <= 75 for w in words)  # RFC 2047 2: an encoded word is at most 75 characters


BODIES = [
    "plain ascii\nsecond line\n",
    ".starts with a dot\n.\n..two dots\nend\n",
    "a = b; c == d; =3D is not decoded twice; =?utf-8?q?x?=\n",
    "long " * 400 + "\n",  # a 2,000-character line
    "emoji 🧘 and accents é à ü, CJK 日本\n",
    "trailing spaces   \ntabs\t\t\nCR only\rline\r\nCRLF\n",
    "no final newline",
]


@pytest.mark.parametrize("text", BODIES)
def test_bodies_round_trip(text: str) -> None:
    """Dots at line start, '=' signs, long lines, emoji and mixed line ends survive, with lines <= 998 octets."""
    html = f"<p style=\"color: #123\">{text}</p>"
    raw = mime.multipart_alternative([("Subject", "s")], text, html)
    assert_wire_form(raw)
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/alternative" and msg.defects == []
    want = text.replace("\r\n", "\n").replace("\r", "\n")
    got_text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    got_html = msg.get_body(("html",)).get_content().replace("\r\n", "\n")
    assert got_text.rstrip("\n") == want.rstrip("\n")
    assert got_html.rstrip("\n") == html.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


def test_body_encoding_choice() -> None:
    """Short ASCII lines go 7bit (smallest on the wire); non-ASCII or long lines go quoted-printable."""
    assert mime.body_part("plain", "hi\n")[0].endswith(b"7bit")
    assert mime.body_part("plain", "hé\n")[0].endswith(b"quoted-printable")
    assert mime.body_part("plain", "x" * 1000)[0].endswith(b"quoted-printable")


def test_boundary_never_in_a_body() -> None:
    """A 7bit body that happens to contain a boundary-looking string gets a different boundary."""
    raw = mime.multipart_alternative([("Subject", "s")], "--=_drip_ and text\n", "<p>x</p>")
    msg = parse(raw)
    assert len(list(msg.iter_parts())) == 2


def test_a_non_ascii_header_value_is_refused() -> None:
    """Raw non-ASCII in a header is a caller bug and fails loudly instead of going out malformed."""
    with pytest.raises(UnicodeEncodeError):
        mime.multipart_alternative([("Subject", "é")], "x", "y")


_QP_PIECES = ["a", " ", "\t", "é", "=", "\n", ".", "x" * 80, "\u200c", "From ", "\n.", "  \n", "\x00", "~", "\x7f",
              "\n\n", " \t", "x" * 70, "<td style=\"color: red\">"]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_QP_PIECES), max_size=40), st.text(max_size=200))
def test_line_by_line_quoted_printable_is_binascii_exactly(pieces: list[str], free: str) -> None:
    """The cached line-by-line encoder gives b2a_qp's bytes for any CRLF text, twice in a row
    (the second time from the cache); for one line without a line end, with CRLF soft breaks where
    b2a_qp, having no line end to copy, writes bare LFs."""
    import binascii

    for text in ("".join(pieces), free, "".join(pieces) + free + "\n"):
        data = mime.crlf(text)
        expected = binascii.b2a_qp(data, istext=True)
        if b"\r\n" not in data:
            expected = expected.replace(b"=\n", b"=\r\n")
        assert mime.quoted_printable(data) == expected
        assert mime.quoted_printable(data) == expected


_TEXTS = st.lists(st.sampled_from([*_QP_PIECES, "\r", "y" * 1000, "😀"]), max_size=12).map("".join)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_TEXTS, min_size=1, max_size=5), st.data(), st.sampled_from(["plain", "html"]))
def test_a_body_template_gives_body_part_exactly(pieces: list[str], data: st.DataObject, subtype: str) -> None:
    """Fixed lines encoded ahead, values' lines per email: the same bytes as `body_part` of the whole
    text, 7bit or quoted-printable, whatever the values (line breaks in them included)."""
    try:
        template = mime.BodyTemplate(subtype, pieces)
    except ValueError:  # a CR in a piece, or under three lines: the caller encodes each email whole
        assert any("\r" in p for p in pieces) or mime.crlf("".join(pieces)).count(b"\r\n") < 2
        return
    for _ in range(3):
        values = data.draw(st.lists(st.one_of(_TEXTS, st.text(max_size=30)), min_size=len(pieces) - 1,
                                    max_size=len(pieces) - 1))
        whole = pieces[0] + "".join(v + p for v, p in zip(values, pieces[1:], strict=True))
        assert template.part(values) == mime.body_part(subtype, whole)


_WIRE_TEXTS = st.lists(st.sampled_from(["a", " ", "\n", "\r", "\r\n", "\n\n", "é", "x" * 1000, "--", "."]),
                       max_size=20).map("".join)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_WIRE_TEXTS, min_size=1, max_size=4), st.lists(_WIRE_TEXTS, min_size=1, max_size=4), st.data())
def test_the_writers_pieces_have_crlf_line_ends_only(text: list[str], html: list[str], data: st.DataObject) -> None:
    """Whatever line ends the texts and a reader's values hold (LF, CR, CRLF, none), every line of the
    written email ends in CRLF, in the body parts encoded ahead too: DKIM signing relies on it and skips
    its own scan for bare line feeds (compose/dkim.py)."""
    parts = None
    try:
        templates = mime.BodyTemplate("plain", text), mime.BodyTemplate("html", html)
    except ValueError:
        templates = None
    if templates is not None:
        parts = tuple(t.part_pieces(data.draw(st.lists(_WIRE_TEXTS, min_size=len(t.pieces) - 1,
                                                       max_size=len(t.pieces) - 1))) for t in templates)
    pieces = mime.multipart_alternative_pieces([("Subject", "s")], "".join(text), "".join(html), parts)
    assert pieces[1] == b"\r\n\r\n" and b"\r\n\r\n" not in pieces[0]
    raw = b"".join(pieces)
    assert_wire_form(raw)
    assert b"\r" not in raw.replace(b"\r\n", b"")


def test_a_body_template_changes_encoding_with_its_values() -> None:
    """An ASCII text stays 7bit until a reader's value brings a non-ASCII character or a long line."""
    template = mime.BodyTemplate("plain", ["Hi ", ",\nline two\nline three\n"])
    assert template.part(["Ada"])[0].endswith(b"7bit")
    assert template.part(["Zoë"])[0].endswith(b"quoted-printable")
    assert template.part(["x" * 999])[0].endswith(b"quoted-printable")
    assert template.part(["Zoë"])[1] == b"Hi Zo=C3=AB,\r\nline two\r\nline three\r\n"
