"""Transports, chosen by DRIP_EMAIL_URL: file (the default), smtp/smtps, and the HTTP APIs of Postmark,
SendGrid, Mailgun, Amazon SES and Resend (docs/providers.md)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from service.core.config import ConfigError
from service.transports.base import OutboundEmail, SendResult, Transport, TransportError

__all__ = ["OutboundEmail", "SendResult", "Transport", "TransportError", "make_transport"]


def make_transport(url: str) -> Transport:
    """A new transport for one pass (SMTP keeps one connection open for the pass)."""
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from service.transports.file import FileTransport

        parts = urlsplit(url)
        return FileTransport(Path(unquote(parts.netloc + parts.path) or "outbox"))
    if scheme in ("smtp", "smtps"):
        from service.transports.smtp import SmtpConfig, SmtpTransport

        return SmtpTransport(SmtpConfig.from_url(url))
    if scheme in API_TRANSPORTS:
        import importlib

        from service.transports.http import ApiUrl

        module_name, class_name = API_TRANSPORTS[scheme]
        module = importlib.import_module(f"{__name__}.{module_name}")
        return getattr(module, class_name)(ApiUrl.parse(url))
    raise ConfigError(f"DRIP_EMAIL_URL: unknown transport {scheme!r} (use file://, smtp://, smtps://, "
                      f"{', '.join(s + '://' for s in API_TRANSPORTS)})")


API_TRANSPORTS = {
    "postmark": ("postmark", "PostmarkTransport"),
    "sendgrid": ("sendgrid", "SendGridTransport"),
    "mailgun": ("mailgun", "MailgunTransport"),
    "ses": ("ses", "SesTransport"),
    "resend": ("resend", "ResendTransport"),
}
