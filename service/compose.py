"""Compose: campaign step + Jinja2 templates -> a complete MIME email (OutboundEmail).

Templates are compiled once per Composer. HTML is autoescaped and rendered with StrictUndefined, so an
unknown variable is an error, never a blank; CSS is inlined (media queries stay in <style>). Every
header is built through the email package, and every user-supplied value is stripped of control
characters first, so no field can inject a header.
"""
from __future__ import annotations

import email.policy
import email.utils
import re
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote

import css_inline
from email_validator import EmailNotValidError, validate_email
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .campaigns import Campaign, Step
from .transports.base import OutboundEmail

# Issue 7: lone surrogates too (hypothesis found them crashing the UTF-8 encode of a header).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# CRLF line ends; fold only past RFC 5322's hard limit, so long List-Unsubscribe URLs are never
# RFC 2047-encoded (mailbox providers do not decode them there).
MIME_POLICY = email.policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class ComposeJob:
    """Plain values the dispatcher reads from the database for one message."""

    message_pk: int
    message_id: str  # the Message-ID header, fixed when the row was created
    campaign: Campaign
    step: Step
    to_email: str
    name: str
    unsubscribe_url: str
    now: datetime


def one_line(text: str) -> str:
    return " ".join(_CONTROL.sub(" ", text).split())


def header_text(text: str) -> str:
    """User text bound for a header: one line, and no RFC 2047 encoded word (cpython#121650: the email
    package decodes `=?UTF-8?Q?=0A?=` back into a raw newline when it serialises a display name)."""
    return one_line(text).replace("=?", "= ?")


def check_header_block(raw: bytes, allowed: frozenset[str]) -> None:
    """Last line of defence: every header line of the serialised message is one we set."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            continue
        name = line.split(b":", 1)[0].decode("ascii", "replace").lower()
        if name not in allowed or b"\n" in line or b"\r" in line:
            raise ValueError(f"refusing to send: unexpected header line {line[:60]!r}")


def ascii_address(address: str) -> str:
    """The envelope/header form: IDN domains in Punycode (the local part is ASCII by signup policy)."""
    try:
        return validate_email(address, check_deliverability=False, test_environment=True).ascii_email or address
    except EmailNotValidError:
        return address


ALLOWED_HEADERS = frozenset({
    "from", "to", "subject", "message-id", "date", "list-unsubscribe", "list-unsubscribe-post", "list-id",
    "mime-version", "content-type", "content-transfer-encoding",
})


class Composer:
    def __init__(self, *, templates_dir: Path, base_url: str, postal_address: str, from_override: str | None = None,
                 unsubscribe_mailto: str | None = None) -> None:
        self.env = Environment(
            loader=FileSystemLoader(str(templates_dir)),
            undefined=StrictUndefined,
            autoescape=select_autoescape(["html"], default_for_string=False),
            trim_blocks=False,
            auto_reload=False,
        )
        # Subjects are plain text headers, not HTML: escaping would show "&amp;" in the inbox.
        self.subject_env = Environment(undefined=StrictUndefined, autoescape=False)  # noqa: S701
        self.base_url = base_url
        self.postal_address = postal_address
        self.from_override = from_override
        self.unsubscribe_mailto = unsubscribe_mailto
        self.inliner = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)
        self._subjects: dict[tuple[str, str], object] = {}

    def from_header(self, campaign: Campaign) -> str:
        """DRIP_FROM replaces the campaign's address; without a display name of its own it keeps the campaign's."""
        if not self.from_override:
            return campaign.from_address
        name, addr = email.utils.parseaddr(self.from_override)
        return email.utils.formataddr((name or campaign.sender_name, addr))

    def context(self, job: ComposeJob) -> dict:
        campaign, step = job.campaign, job.step
        name = one_line(job.name)
        first = name.split(" ")[0] if name else ""
        return {
            "greeting": f"Hi {first}," if first else "Hi there,",
            "subscriber": {"first_name": first, "name": name, "email": job.to_email},
            "campaign": {"key": campaign.key, "title": campaign.title, "sender_name": campaign.sender_name},
            "step": {"key": step.key, "number": step.index + 1, "total": len(campaign.steps)},
            "resources": campaign.resources,
            "unsubscribe_url": job.unsubscribe_url,
            "postal_address": self.postal_address,
            "why": campaign.why,
            "base_url": self.base_url,
            "preheader": step.preheader,
        }

    def render_subject(self, job: ComposeJob, ctx: dict) -> str:
        key = (job.campaign.key, job.step.key)
        template = self._subjects.get(key)
        if template is None:
            template = self._subjects[key] = self.subject_env.from_string(job.step.subject)
        return header_text(template.render(ctx))[:250]

    def render(self, job: ComposeJob) -> tuple[str, str, str]:
        ctx = self.context(job)
        subject = self.render_subject(job, ctx)
        ctx["subject"] = subject
        base = f"{job.campaign.key}/{job.step.template}"
        text = self.env.get_template(f"{base}.txt").render(ctx).strip() + "\n"
        html = self.inliner.inline(self.env.get_template(f"{base}.html").render(ctx))
        return subject, text, html

    def compose(self, job: ComposeJob) -> OutboundEmail:
        subject, text, html = self.render(job)
        from_header = self.from_header(job.campaign)
        sender = email.utils.parseaddr(from_header)[1]
        domain = sender.rpartition("@")[2]
        recipient = ascii_address(job.to_email)
        mailto = self.unsubscribe_mailto or f"unsubscribe@{domain}"
        token = job.unsubscribe_url.rstrip("/").rpartition("/")[2]
        headers = (
            ("Message-ID", job.message_id),
            ("Date", email.utils.format_datetime(job.now)),
            ("List-Unsubscribe", f"<{job.unsubscribe_url}>, <mailto:{mailto}?subject={quote('unsubscribe ' + token)}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("List-Id", f"{one_line(job.campaign.title)} <{job.campaign.key}.{domain}>"),
        )
        msg = EmailMessage(policy=MIME_POLICY)
        msg["From"] = from_header
        local, _, rdomain = recipient.rpartition("@")
        msg["To"] = Address(display_name=header_text(job.name), username=local, domain=rdomain)
        msg["Subject"] = subject
        for name, value in headers:
            msg[name] = value
        msg.set_content(text, cte="quoted-printable")
        msg.add_alternative(html, subtype="html", cte="quoted-printable")
        raw = msg.as_bytes()
        check_header_block(raw, ALLOWED_HEADERS)
        return OutboundEmail(
            message_pk=job.message_pk, envelope_from=sender, recipient=recipient, from_header=from_header,
            to_header=str(msg["To"]), subject=subject, text=text, html=html, headers=headers,
            raw=raw, idempotency_key=f"drip-message-{job.message_pk}",
        )


def new_message_id(from_address: str, message_pk: int, nonce: str) -> str:
    domain = email.utils.parseaddr(from_address)[1].rpartition("@")[2] or "drip.invalid"
    return f"<drip.{message_pk}.{nonce}@{domain}>"
