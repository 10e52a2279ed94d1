"""SMTP and SMTPS: one connection for the whole batch, STARTTLS, AUTH, timeouts.

Replies are classified the RFC 5321 way: 4xx and dropped connections are transient (retry later);
5xx refusals of a recipient are permanent (a bounce). A 5.7.x policy refusal is permanent for the
message but says nothing about the mailbox, so it does not suppress the address. Failing to connect
or to authenticate is a failure of the transport, not of any recipient: the batch is retried later.
"""
from __future__ import annotations

import logging
import re
import smtplib
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from .base import OutboundEmail, SendResult, TransportError

log = logging.getLogger(__name__)
ENHANCED = re.compile(rb"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    implicit_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, log or traceback
    timeout: float = 30.0
    verify: bool = True
    local_hostname: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SmtpConfig:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (465 if implicit else 25),
            implicit_tls=implicit,
            starttls=query.get("starttls", "false").lower() in ("1", "true", "yes"),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            timeout=float(query.get("timeout", 30)),
            verify=query.get("verify", "true").lower() not in ("0", "false", "no"),
            local_hostname=query.get("helo"),
        )


def classify(code: int, message: bytes | str) -> SendResult:
    raw = message if isinstance(message, bytes) else str(message).encode()
    text = f"{code} {raw.decode('utf-8', 'replace')}".strip()
    if 200 <= code < 300:
        return SendResult(ok=True, code=code)
    if code >= 500:
        m = ENHANCED.search(raw)
        policy = bool(m and m.group(1) == b"5" and m.group(2) in (b"6", b"7"))
        return SendResult(ok=False, permanent=True, code=code, error=text, suppress=not policy)
    return SendResult(ok=False, code=code, error=text)


class SmtpTransport:
    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._conn: smtplib.SMTP | None = None

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if not self.config.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        try:
            if c.implicit_tls:
                conn: smtplib.SMTP = smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout, context=self._context(),
                                                      local_hostname=c.local_hostname)
            else:
                conn = smtplib.SMTP(c.host, c.port, timeout=c.timeout, local_hostname=c.local_hostname)
            conn.ehlo()
            if c.starttls and not c.implicit_tls:
                conn.starttls(context=self._context())
                conn.ehlo()
            if c.username:
                conn.login(c.username, c.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            log.error("SMTP login to %s:%s refused (%s): check the credentials in DRIP_EMAIL_URL",
                      c.host, c.port, exc.smtp_code)
            raise TransportError(f"SMTP authentication failed: {exc.smtp_code}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransportError(f"cannot connect to SMTP server {c.host}:{c.port}: {exc}") from None
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None

    def send(self, batch: Sequence[OutboundEmail]) -> Iterator[SendResult]:
        if self._conn is None:
            self._conn = self._connect()  # a TransportError here defers the whole batch
        for item in batch:
            if self._conn is None:
                try:
                    self._conn = self._connect()
                except TransportError as exc:
                    yield SendResult(ok=False, error=str(exc))
                    continue
            yield self._send_one(item)

    def _send_one(self, item: OutboundEmail) -> SendResult:
        conn = self._conn
        assert conn is not None
        try:
            refused = conn.sendmail(item.envelope_from, [item.recipient], item.raw)
        except smtplib.SMTPRecipientsRefused as exc:
            code, msg = next(iter(exc.recipients.values()))
            result = classify(code, msg)
        except smtplib.SMTPResponseException as exc:  # sender refused, data error, 421 ...
            result = classify(exc.smtp_code, exc.smtp_error)
            if exc.smtp_code == 421 or isinstance(exc, smtplib.SMTPSenderRefused):
                self._drop()
                if isinstance(exc, smtplib.SMTPSenderRefused) and result.permanent:
                    # Our own envelope sender was refused: a configuration problem, not a bounce.
                    result = SendResult(ok=False, permanent=True, code=exc.smtp_code, error=result.error)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            return SendResult(ok=False, error=f"connection lost: {exc or type(exc).__name__}")
        except smtplib.SMTPException as exc:
            self._drop()
            return SendResult(ok=False, error=f"SMTP error: {exc}")
        else:
            if refused:
                code, msg = next(iter(refused.values()))
                return classify(code, msg)
            return SendResult(ok=True, code=250)
        return result

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                pass
        self._drop()
