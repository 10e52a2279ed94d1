"""The transport interface: values in, values out (after Django's email backends and Healthchecks).

A transport sends a batch and yields one `SendResult` per email, in order, as each is done, so the
dispatcher can record outcomes while the batch is still going.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class OutboundEmail:
    """One composed email, ready for any transport."""

    message_pk: int  # our messages.id
    envelope_from: str
    recipient: str  # ASCII envelope recipient
    from_header: str
    to_header: str
    subject: str
    text: str
    html: str
    headers: tuple[tuple[str, str], ...]  # Message-ID, Date, List-Unsubscribe, ... in order
    raw: bytes = field(repr=False)  # the full RFC 5322 message
    idempotency_key: str = ""
    # The pieces `raw` is joined from, when some are shared by every email of a step (mime.Fixed),
    # so its "as sent" copy can refer to those (as_sent.py); None when composed in one piece.
    layout: tuple[bytes, ...] | None = field(default=None, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass(frozen=True)
class SendResult:
    ok: bool
    permanent: bool = False  # a permanent refusal for this recipient (bounce), no retry
    code: int | None = None
    error: str = ""
    provider_id: str | None = None
    retry_after: float | None = None  # seconds, when the server said so
    suppress: bool = False  # the address itself is bad: suppress it
    # The failure was the transport's (relay unreachable, our credentials or sender refused), not this
    # recipient's: it never counts as an attempt and never gives the message up.
    transport: bool = False


class TransportError(Exception):
    """A failure of the whole transport (cannot connect, bad credentials), not of one recipient."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None,
                 auth_failed: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        # The provider refused our credentials (HTTP 401/403): pause all sending, fail no message.
        self.auth_failed = auth_failed


class Transport(Protocol):
    name: str
    # Whether `raw` (our MIME, with its DKIM signatures) is what goes out. Provider APIs that take text and
    # HTML fields build and sign their own message; a transport may set this False (the default is True).
    sends_mime: bool
    # Emails per dispatcher chunk when more than the dispatcher's 250 suit it (an API transport: its
    # requests in flight drain at the end of each chunk); optional.
    chunk: int

    def send(self, batch: Iterable[OutboundEmail]) -> Iterator[SendResult]:
        """Send each email; yield a result per email in order. Raise TransportError only before the first.

        `batch` may be a lazy iterable: take each email only when about to send it (the dispatcher
        re-checks readers while it hands them over), and never call len() on it."""
        ...

    def close(self) -> None: ...
