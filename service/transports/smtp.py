"""SMTP and SMTPS: one connection for the whole batch, STARTTLS, AUTH, timeouts.

Replies are classified the RFC 5321 way: 4xx and dropped connections are transient (retry later);
5xx is permanent for that email. Only a refusal that is about the mailbox suppresses the address:
an RFC 3463 code 5.1.x (addressing) or 5.2.x (mailbox, except 5.2.3 message too big), or a bare
550/551/553 at RCPT. Everything else permanent (5.3.4 too big, 5.6.x content, 5.7.x policy, relay
denied) fails the email without blaming the reader. Failing to connect, to authenticate, or having our
own envelope sender refused is the transport's failure, not any recipient's: the batch waits and
retries without counting attempts.
"""
from __future__ import annotations

import logging
import re
import smtplib
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from .base import OutboundEmail, SendResult, TransportError

log = logging.getLogger(__name__)
ENHANCED = re.compile(rb"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


class _PlainAuthRefused(Exception):
    pass


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
    plain_auth: bool = False  # allow AUTH without TLS (loopback relays only)

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
            plain_auth=query.get("plain_auth", "false").lower() in ("1", "true", "yes"),
        )


def classify(code: int, message: bytes | str, *, stage: str = "DATA") -> SendResult:
    raw = message if isinstance(message, bytes) else str(message).encode()
    text = f"{code} {raw.decode('utf-8', 'replace')}".strip()
    if 200 <= code < 300:
        return SendResult(ok=True, code=code)
    if code >= 500:
        return SendResult(ok=False, permanent=True, code=code, error=text, suppress=_about_mailbox(code, raw, stage))
    return SendResult(ok=False, code=code, error=text)


def _about_mailbox(code: int, raw: bytes, stage: str) -> bool:
    m = ENHANCED.search(raw)
    if m:
        subject, detail = m.group(2), m.group(3)
        return subject == b"1" or (subject == b"2" and detail != b"3")
    return stage == "RCPT" and code in (550, 551, 553) and b"relay" not in raw.lower()


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
            wants_tls = c.starttls or (c.username is not None and conn.has_extn("starttls"))
            if wants_tls and not c.implicit_tls:
                conn.starttls(context=self._context())
                conn.ehlo()
            if c.username:
                if not (c.implicit_tls or wants_tls or c.plain_auth):
                    conn.close()
                    raise _PlainAuthRefused(
                        f"SMTP server {c.host}:{c.port} offers no TLS: refusing to send the password in clear "
                        "(use smtps://, a server with STARTTLS, or ?plain_auth=true on a trusted network)")
                conn.login(c.username, c.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            log.error("SMTP login to %s:%s refused (%s): check the credentials in DRIP_EMAIL_URL",
                      c.host, c.port, exc.smtp_code)
            raise TransportError(f"SMTP authentication failed: {exc.smtp_code}") from None
        except _PlainAuthRefused as exc:
            log.error("%s", exc)
            raise TransportError(str(exc)) from None
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

    def send(self, batch: Iterable[OutboundEmail]) -> Iterator[SendResult]:
        if self._conn is None:
            self._conn = self._connect()  # a TransportError here defers the whole batch
        for item in batch:
            if self._conn is None:
                try:
                    self._conn = self._connect()
                except TransportError as exc:
                    yield SendResult(ok=False, error=str(exc), transport=True)
                    continue
            yield self._send_one(item)

    def _send_one(self, item: OutboundEmail) -> SendResult:
        conn = self._conn
        assert conn is not None
        try:
            refused = conn.sendmail(item.envelope_from, [item.recipient], item.raw)
        except smtplib.SMTPRecipientsRefused as exc:
            code, msg = next(iter(exc.recipients.values()))
            result = classify(code, msg, stage="RCPT")
        except smtplib.SMTPSenderRefused as exc:
            # Our own envelope sender was refused: configuration, not any recipient's fault.
            self._drop()
            reply = classify(exc.smtp_code, exc.smtp_error).error
            log.error("SMTP server refused our envelope sender %s: %s", item.envelope_from, reply)
            return SendResult(ok=False, code=exc.smtp_code, transport=True,
                              error=f"sender {item.envelope_from} refused: {reply}")
        except smtplib.SMTPResponseException as exc:  # data error, 421 ...
            result = classify(exc.smtp_code, exc.smtp_error)
            if exc.smtp_code == 421:
                self._drop()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            return SendResult(ok=False, error=f"connection lost: {exc or type(exc).__name__}")
        except smtplib.SMTPException as exc:
            self._drop()
            return SendResult(ok=False, error=f"SMTP error: {exc}")
        else:
            if refused:
                code, msg = next(iter(refused.values()))
                return classify(code, msg, stage="RCPT")
            return SendResult(ok=True, code=250)
        return result

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                pass
        self._drop()
