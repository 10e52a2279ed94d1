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
    headers = [(k, str(v)) for k, v in msg.items()]
    return EmailView(headers=headers, text=_part(msg, "plain"), html=_part(msg, "html"))


def _part(msg: email.message.EmailMessage, subtype: str) -> str | None:
    try:
        body = msg.get_body(preferencelist=(subtype,))
        return body.get_content() if body is not None else None
    except (LookupError, ValueError, UnicodeError, AttributeError):
        return None
