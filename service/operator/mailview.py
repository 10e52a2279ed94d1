"""Read a stored RFC 5322 email back into what an operator wants to see: headers, text part, HTML part."""
from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass


@dataclass(frozen=True)
class EmailView:
    headers: list[tuple[str, str]]
    text: str | None
    html: str | None


def parse_email(raw: bytes) -> EmailView:
    """Never raises on malformed input: an operator looking at a broken email must still see its bytes."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    headers = [(k, _header(msg, k, v)) for k, v in msg.raw_items()]
    return EmailView(headers=headers, text=_part(msg, "plain"), html=_part(msg, "html"))


def _header(msg: email.message.EmailMessage, name: str, raw: str) -> str:
    """The header decoded for display, or as written when decoding fails: a reader's address such as
    `=?utf-8?q?a=0D=0A?=@example.com` is valid ASCII, but the email package decodes the encoded word inside
    it to CR LF and then refuses the address it built."""
    try:
        return str(msg.policy.header_factory(name, raw))
    except (ValueError, TypeError, LookupError, IndexError, AttributeError):
        return " ".join(raw.split())


def _part(msg: email.message.EmailMessage, subtype: str) -> str | None:
    try:
        body = msg.get_body(preferencelist=(subtype,))
        return body.get_content() if body is not None else None
    except (LookupError, ValueError, UnicodeError, AttributeError):
        return None
