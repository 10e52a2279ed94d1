"""Bounces that come back by email (plain SMTP relays): RFC 3464 DSNs -> `DeliveryEvent`s.

Only a `multipart/report; report-type=delivery-status` message counts. Out-of-office replies,
challenge-response mails and anything else that lands in the bounce mailbox are not DSNs and are
ignored, so a holiday never suppresses a reader (listmonk#1334 counted those as bounces).

The message is found by the VERP envelope sender (`bounces+<id>-<sig>@…`, the address the DSN was
sent to), else by the Message-ID in the returned headers. A failed delivery's RFC 3463 status is read
by the same rule as a refusal answered at once (service/core/smtp_status.py): about the mailbox, a hard
bounce; any other permanent status (too big, content, policy), the email failed and the reader stays;
4.x.x, a soft bounce. Action "delayed" is a deferral.
"""
from __future__ import annotations

import email
import email.policy
import hashlib
import imaplib
import logging
import mailbox
import ssl
from collections.abc import Iterator
from email.message import Message as MimeMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from service.core import smtp_status
from service.core.smtp_status import Verdict
from service.core.verp import parse_verp
from service.feedback.delivery import DeliveryEvent

log = logging.getLogger(__name__)


def parse_dsn(raw: bytes, *, secret: str) -> list[DeliveryEvent]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    if msg.get_content_type() != "multipart/report" or \
            (msg.get_param("report-type") or "").lower() != "delivery-status":
        return []  # an auto-reply, a human, spam: not a delivery status notification
    status_part = next((p for p in msg.walk() if p.get_content_type() == "message/delivery-status"), None)
    if status_part is None:
        return []
    blocks = [b for b in (status_part.get_payload() or []) if isinstance(b, MimeMessage)]
    pk = parse_verp(secret, " ".join(msg.get_all("To", []) + msg.get_all("Delivered-To", []) +
                                     msg.get_all("X-Original-To", [])))
    returned = _returned_message_id(msg)
    event_base = (msg.get("Message-ID") or hashlib.sha256(raw).hexdigest()).strip()
    out = []
    for i, block in enumerate(blocks[1:]):  # the first block describes the whole message
        kind = _kind(block.get("Action", ""), block.get("Status", ""))
        if kind is None:
            continue
        recipient = (block.get("Final-Recipient") or block.get("Original-Recipient") or "").partition(";")[2].strip()
        out.append(DeliveryEvent(
            kind, source="dsn", event_id=f"{event_base}:{i}", message_pk=pk, message_id_header=returned,
            email=recipient or None,
            detail=f"{block.get('Action', '').strip()} {block.get('Status', '').strip()} "
                   f"{' '.join(str(block.get('Diagnostic-Code', '')).split())}".strip()))
    return out


def _kind(action: str, status: str) -> str | None:
    action = action.strip().lower()
    if action in ("delivered", "relayed", "expanded"):
        return "delivered"
    if action == "delayed":
        return "deferred"
    if action != "failed":
        return None
    verdict = smtp_status.classify(None, status)
    if verdict is Verdict.MAILBOX:
        return "hard_bounce"
    if verdict is Verdict.REFUSED:
        return "failed"
    return "soft_bounce"


def _returned_message_id(msg: MimeMessage) -> str | None:
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "text/rfc822-headers":
            payload = part.get_payload(decode=True) or b""
            headers = email.message_from_bytes(payload, policy=email.policy.compat32)
            if headers.get("Message-ID"):
                return headers["Message-ID"].strip()
        elif ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and inner[0].get("Message-ID"):
                return inner[0]["Message-ID"].strip()
    return None


def maildir_messages(path: Path) -> Iterator[tuple[str, bytes, mailbox.Maildir]]:
    """Unseen messages of a Maildir folder: (key, raw bytes, the folder) so the caller can flag them."""
    box = mailbox.Maildir(str(path), factory=None, create=False)
    for key in list(box.iterkeys()):
        item = box.get_message(key)
        if "S" in item.get_flags():
            continue
        yield key, item.as_bytes(), box


def mark_seen(box: mailbox.Maildir, key: str) -> None:
    item = box.get_message(key)
    item.set_subdir("cur")
    item.add_flag("S")
    box[key] = item


class ImapBox:
    """An IMAP folder read with imaplib: `imaps://user:pass@host[:993]/INBOX` (TLS), or `imap://…` with
    `?starttls=true` (plain `imap://` only for loopback test servers). Unseen messages are read with
    BODY.PEEK and flagged \\Seen once applied, so a crash in between processes them again (replays apply once)."""

    def __init__(self, url: str, *, timeout: float = 30) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("imap", "imaps") or not parts.hostname or not parts.username:
            raise ValueError("expected imaps://user:password@host[:port]/FOLDER")
        starttls = parse_qs(parts.query).get("starttls", ["false"])[-1].lower() in ("1", "true", "yes")
        if parts.scheme == "imap" and not starttls and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("refusing to send a password over plain IMAP: use imaps:// or ?starttls=true")
        context = ssl.create_default_context()
        if parts.scheme == "imaps":
            self.conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(parts.hostname, parts.port or 993, ssl_context=context,
                                                         timeout=timeout)
        else:
            self.conn = imaplib.IMAP4(parts.hostname, parts.port or 143, timeout=timeout)
            if starttls:
                self.conn.starttls(ssl_context=context)
        try:
            self.conn.login(unquote(parts.username), unquote(parts.password or ""))
            folder = unquote(parts.path.lstrip("/")) or "INBOX"
            if self.conn.select(folder)[0] != "OK":
                raise ValueError(f"cannot open IMAP folder {folder!r}")
        except (imaplib.IMAP4.error, ValueError) as exc:
            self.conn.shutdown()
            raise ValueError(f"IMAP login or folder refused: {exc}") from None

    def unseen(self) -> Iterator[tuple[bytes, bytes]]:
        typ, data = self.conn.uid("SEARCH", None, "UNSEEN")
        for uid in (data[0] or b"").split() if typ == "OK" else []:
            typ, parts = self.conn.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((p[1] for p in parts if isinstance(p, tuple)), None)
            if typ == "OK" and raw is not None:
                yield uid, raw

    def mark_seen(self, uid: bytes) -> None:
        self.conn.uid("STORE", uid, "+FLAGS", "(\\Seen)")

    def close(self) -> None:
        try:
            self.conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
