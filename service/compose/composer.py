"""Compose: campaign step + Jinja2 templates -> a complete MIME email (OutboundEmail).

Templates are compiled once per Composer. HTML is autoescaped and rendered with StrictUndefined, so an
unknown variable is an error, never a blank; CSS is inlined (media queries stay in <style>). Every
header is built through the email package, and every user-supplied value is stripped of control
characters first, so no field can inject a header.
"""
from __future__ import annotations

import email.policy
import email.utils
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import css_inline
from jinja2 import StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from service.campaigns.model import Campaign, Step
from service.compose import mime, render_plan
from service.compose.dkim import sign as dkim_sign
from service.compose.sources import CampaignSources
from service.core.addresses import ascii_address, new_message_id, sender_address
from service.core.config import PLACEHOLDER_POSTAL_ADDRESS
from service.core.dkim_keys import DkimKey
from service.transports.base import OutboundEmail

# Control characters, line separators and lone surrogates (hypothesis found them crashing the UTF-8 encode of a header).
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
    public_id: str = ""  # the subscriber's public id, for the preference link
    why: str = ""  # the footer's "why" of the campaign the reader signed up for, when not this one
    test: bool = False  # `drip send-test`: "[TEST] " subject prefix and an X-Drip-Test: 1 header


def one_line(text: str) -> str:
    return " ".join(_CONTROL.sub(" ", text).split())


def header_text(text: str) -> str:
    """User text bound for a header: one line, and no RFC 2047 encoded word (cpython#121650: the email
    package decodes `=?UTF-8?Q?=0A?=` back into a raw newline when it serialises a display name)."""
    return one_line(text).replace("=?", "= ?")


def check_header_block(raw: bytes, allowed: frozenset[str]) -> None:
    """Last line of defence: every header line of the serialised message is one we set."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[:end]  # not split(): that copied the whole body too
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            continue
        name = line.split(b":", 1)[0].decode("ascii", "replace").lower()
        if name not in allowed or b"\n" in line or b"\r" in line:
            raise ValueError(f"refusing to send: unexpected header line {line[:60]!r}")




ALLOWED_HEADERS = frozenset({
    "from", "to", "subject", "message-id", "date", "list-unsubscribe", "list-unsubscribe-post", "list-id",
    "mime-version", "content-type", "content-transfer-encoding", "feedback-id", "reply-to", "dkim-signature",
    "x-drip-test",  # only on `drip send-test` emails
})


class Composer:
    # The footer's reader links: (public_id, message_pk) -> {"preferences_url", "view_url"}; the runtime
    # sets it (it holds the secret key). Unset (previews, lint) the links point at sample pages.
    reader_links: Callable[[str, int], dict[str, str]] | None = None
    # An inviting campaign's "yes" link: (public_id, campaign key) -> URL; set by the runtime like reader_links.
    invite_link: Callable[[str, str], str] | None = None

    def __init__(self, *, templates_dir: Path, base_url: str, postal_address: str, from_override: str | None = None,
                 unsubscribe_mailto: str | None = None, dkim_keys: tuple[DkimKey, ...] = (),
                 feedback_id_sender: str | None = None, bounce_domain: str | None = None,
                 reply_to: str | None = None, secret_key: str | None = None, tracking: bool = False,
                 plan_renders: bool = True) -> None:
        # Campaign folders, versions published in the database, Markdown bodies (compose/sources.py).
        # Sandboxed: an operator writes bodies and subjects in the console, and a template must not reach
        # Python's internals (`''.__class__...`) and run code on the server. The sandbox costs nothing
        # measurable here (each step is rendered once, see render_plan.py).
        self.sources = CampaignSources(templates_dir)
        self.env = SandboxedEnvironment(
            loader=self.sources,
            undefined=StrictUndefined,
            autoescape=select_autoescape(["html"], default_for_string=False),
            trim_blocks=False,
            auto_reload=False,
        )
        # Subjects are plain text headers, not HTML: escaping would show "&amp;" in the inbox.
        self.subject_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        self.base_url = base_url
        # The placeholder is for the operator's warning, not for readers: the footer then shows no address.
        self.postal_address = "" if postal_address == PLACEHOLDER_POSTAL_ADDRESS else postal_address
        self.from_override = from_override
        self.unsubscribe_mailto = unsubscribe_mailto
        self.inliner = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)
        self._subjects: dict[tuple[str, str], tuple] = {}
        self._utm_links: dict[tuple, dict[str, str]] = {}
        self._plans: dict[tuple, tuple[Campaign, render_plan.Plan | None]] = {}
        self.plan_renders = plan_renders  # render each step once; off only to compare with the full path in tests
        # Deliverability: see deliverability_headers, envelope_sender and sign_message.
        self.dkim_keys = dkim_keys
        self.feedback_id_sender = feedback_id_sender
        self.reply_to = reply_to
        # VERP envelope senders (DRIP_BOUNCE_DOMAIN) and open/click tracking (DRIP_TRACKING=on)
        self.bounce_domain = bounce_domain
        self.secret_key = secret_key
        self.tracking = tracking and secret_key is not None

    def from_header(self, campaign: Campaign) -> str:
        """DRIP_FROM replaces the campaign's address; without a display name of its own it keeps the campaign's."""
        if not self.from_override:
            return campaign.from_address
        name, addr = email.utils.parseaddr(self.from_override)
        name = name or campaign.sender_name
        # Raw, not formataddr: a non-ASCII name is RFC 2047-encoded once, by the MIME writer (from_value).
        name = name.replace("\\", "").replace('"', "'")
        return f'"{name}" <{addr}>' if name.isascii() else f"{name} <{addr}>"

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
            "why": job.why or campaign.why,  # a continued enrollment names its lead magnet
            "base_url": self.base_url,
            "preheader": step.preheader,
            **self.reader_context(job),
        }

    def reader_context(self, job: ComposeJob) -> dict:
        """The footer's preference and view-in-browser links, and resource links with the
        campaign's UTM parameters (later keys of `context` win, so `resources` here replaces the raw ones)."""
        if self.reader_links is not None and job.public_id:
            links = self.reader_links(job.public_id, job.message_pk)
        else:
            links = {"preferences_url": f"{self.base_url}/preferences/sample",
                     "view_url": f"{self.base_url}/view/sample"}
        if job.campaign.invite_to:  # only an inviting campaign's templates may print {{ invite_url }}
            signed = self.invite_link is not None and job.public_id
            links["invite_url"] = (self.invite_link(job.public_id, job.campaign.key) if signed
                                   else f"{self.base_url}/join/sample")
        return {**links, "resources": self._resources(job.campaign)}

    def _resources(self, campaign: Campaign) -> dict[str, str]:
        """The campaign's resource links with its UTM parameters, built once per campaign version (URL
        parsing cost ~0.06 ms per email); a copy, since templates get the dict."""
        key = (campaign.key, tuple(campaign.resources.items()), tuple(campaign.utm.items()))
        links = self._utm_links.get(key)
        if links is None:
            links = self._utm_links[key] = {k: with_utm(v, campaign.utm) for k, v in campaign.resources.items()}
        return dict(links)

    def render_subject(self, job: ComposeJob, ctx: dict) -> str:
        # A filled subject holds this campaign's other values and the reader's "why" as rendered.
        key = (job.campaign.key, job.step.key, ctx["why"])
        found = self._subjects.get(key)
        if found is None or found[0] != job.step.subject or found[3] is not job.campaign:
            template = self.subject_env.from_string(job.step.subject)
            part = None  # like the body, a subject that only prints values is filled, not rendered
            if self.plan_renders and render_plan.string_prints_values_only(self.subject_env, job.step.subject):
                part = render_plan.split(template.render(render_plan.marked(ctx)), ("raw",))
            found = self._subjects[key] = (job.step.subject, template, part, job.campaign)
        _source, template, part, _campaign = found
        text = part.fill(render_plan.values_of(ctx)) if part is not None else template.render(ctx)
        return header_text(text)[:250]

    def render(self, job: ComposeJob) -> tuple[str, str, str]:
        return self._render(job)[:3]

    def _render(self, job: ComposeJob) -> tuple[str, str, str, tuple | None]:
        """(subject, text, html, the two MIME body parts when the step's plan encoded them ahead)."""
        ctx = self.context(job)
        subject = self.render_subject(job, ctx)
        ctx["subject"] = subject
        plan = self._plan(job, ctx) if self.plan_renders else None
        if plan is not None:  # the step rendered once, filled with this reader's values
            return subject, *plan.render_bodies(ctx, _finish_text)
        text, html = self._render_full(job, ctx)
        return subject, text, html, None

    def _render_full(self, job: ComposeJob, ctx: dict) -> tuple[str, str]:
        base = f"{self.sources.add(job.campaign)}/{job.step.template}"
        text = _finish_text(self.env.get_template(f"{base}.txt").render(ctx))
        html = self.inliner.inline(self.env.get_template(f"{base}.html").render(ctx))
        return text, html

    def _plan(self, job: ComposeJob, ctx: dict) -> render_plan.Plan | None:
        """The step's render plan (service/compose/render_plan.py), made on first use; None when the templates
        are not safe to plan, and then the step is rendered in full for every email."""
        defined = tuple(k for k in render_plan.PERSONAL_NAMES if k in ctx)
        key = (id(job.campaign), job.step.key, job.step.template, ctx["why"], defined)
        if key in self._plans:
            return self._plans[key][1]
        base = f"{self.sources.add(job.campaign)}/{job.step.template}"
        plan = None
        if all(render_plan.prints_values_only(self.env, f"{base}.{ext}") for ext in ("txt", "html")):
            marked = render_plan.marked(ctx)
            text = render_plan.split(self.env.get_template(f"{base}.txt").render(marked), ("raw",))
            html_marked = self.inliner.inline(self.env.get_template(f"{base}.html").render(marked))
            html = render_plan.split(html_marked, ("text", "attr"))
            if text is not None and html is not None and render_plan.stylesheet_is_safe(html_marked):
                plan = render_plan.Plan(text=text, html=html, **_body_templates(text, html))
                empty = render_plan.emptied(ctx)  # check 4: blank text the parser would place elsewhere
                if plan.render(empty, _finish_text) != self._render_full(job, empty):
                    plan = None
        # the campaign object is kept with its plan so its id() cannot be reused by another one
        self._plans[key] = (job.campaign, plan)
        return plan

    def delivery_tracking(self, job: ComposeJob, html: str, sender: str) -> tuple[str, str]:
        """After rendering: the VERP envelope sender, and tracked links when tracking is on."""
        from service.compose.tracking import rewrite_html
        from service.core.verp import verp_address

        envelope = self.envelope_sender(sender)
        if self.bounce_domain and self.secret_key is not None:
            envelope = verp_address(self.secret_key, job.message_pk, self.bounce_domain)
        if self.tracking and self.secret_key is not None:
            html = rewrite_html(html, secret=self.secret_key, base_url=self.base_url,
                                message_pk=job.message_pk, unsubscribe_url=job.unsubscribe_url)
        return envelope, html

    def compose(self, job: ComposeJob, *, sign: bool = True) -> OutboundEmail:
        """The email for `job`. `sign=False` leaves out the DKIM signatures, for a provider API that is sent
        the text and HTML rather than our MIME and signs the message it builds itself."""
        subject, text, html, bodies = self._render(job)
        from_header = self.from_header(job.campaign)
        sender = sender_address(from_header)  # IDN domain -> Punycode everywhere
        envelope_from, tracked = self.delivery_tracking(job, html, sender)
        if tracked is not html:  # links rewritten for tracking: the bodies encoded ahead are not this HTML
            html, bodies = tracked, None
        domain = sender.rpartition("@")[2]
        recipient = ascii_address(job.to_email)
        mailto = self.unsubscribe_mailto or f"unsubscribe@{domain}"
        token = job.unsubscribe_url.rstrip("/").rpartition("/")[2]
        headers = (
            ("Message-ID", job.message_id),
            ("Date", _date_header(job.now)),
            ("List-Unsubscribe", f"<{job.unsubscribe_url}>, <mailto:{mailto}?subject={_mailto_subject(token)}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("List-Id", f"{one_line(job.campaign.title)} <{job.campaign.key}.{domain}>"),
        ) + self.deliverability_headers(job, domain)
        if job.test:  # a test send is marked as such in the inbox and in the headers
            subject = header_text(f"[TEST] {subject}")[:250]
            headers += (("X-Drip-Test", "1"),)
        to_name = header_text(job.name)
        # The lean writer (service/compose/mime.py) instead of EmailMessage: ~0.1 ms instead of ~3 ms per email,
        # the largest single cost of composing. Values are made ASCII here (RFC 2047 where needed).
        pieces = mime.multipart_alternative_pieces(
            (("From", self.from_value(from_header)), ("To", mime.address(to_name, recipient)),
             ("Subject", mime.unstructured(subject)), *(_ascii_header(n, v) for n, v in headers)), text, html,
            bodies)
        raw = b"".join(pieces)
        check_header_block(raw, ALLOWED_HEADERS)
        # the signatures, then `raw` (dkim.sign); the pieces spare it the bare-LF scan and most of the body's
        # canonicalization (the lines every email of the step shares are canonicalized once)
        signed = self.sign_message(raw, pieces) if sign else raw
        # The pieces, with the fixed ones shared by every email of the step (as_sent.py stores those once)
        layout = None
        if bodies is not None and signed.endswith(raw):
            layout = (signed[:len(signed) - len(raw)], *pieces) if len(signed) > len(raw) else tuple(pieces)
        raw = signed
        return OutboundEmail(
            message_pk=job.message_pk, envelope_from=envelope_from, recipient=recipient, from_header=from_header,
            to_header=email.utils.formataddr((to_name, recipient)) if to_name.isascii() else f"{to_name} <{recipient}>",
            subject=subject, text=text, html=html, headers=headers,
            raw=raw, idempotency_key=f"drip-message-{job.message_pk}", layout=layout,
        )

    # -- deliverability --------------------------------------------------------------------------
    def deliverability_headers(self, job: ComposeJob, domain: str) -> tuple[tuple[str, str], ...]:
        """Feedback-ID for Gmail's complaint loop (campaign:step:sender) and Reply-To when configured.
        No `Precedence: bulk`: Google advises against it and it suppresses auto-replies only."""
        sender_id = self.feedback_id_sender or domain
        headers: list[tuple[str, str]] = [("Feedback-ID", f"{job.campaign.key}:{job.step.key}:{one_line(sender_id)}")]
        reply_to = job.campaign.reply_to or self.reply_to
        if reply_to:
            headers.append(("Reply-To", header_text(reply_to)))
        return tuple(headers)

    @staticmethod
    @functools.lru_cache(maxsize=256)  # one value per campaign: parseaddr costs ~0.05 ms per email
    def from_value(from_header: str) -> str:
        """The From header as written on the wire: display name in RFC 2047 when not ASCII."""
        name, addr = email.utils.parseaddr(from_header)
        return mime.address(header_text(name), ascii_address(addr))

    def envelope_sender(self, sender: str) -> str:
        """The envelope sender (it becomes Return-Path at the receiver): bounces@DRIP_BOUNCE_DOMAIN when
        set, so bounces reach a mailbox made for them, else the From address. (With a secret key,
        `delivery_tracking` replaces it with a VERP address, bounces+token@DRIP_BOUNCE_DOMAIN.)"""
        return f"bounces@{self.bounce_domain}" if self.bounce_domain else sender

    def sign_message(self, raw: bytes, pieces: list[bytes] | None = None) -> bytes:
        """The serialised message with its DKIM signature(s); every transport sends these bytes. `pieces`:
        what the MIME writer joined `raw` from (dkim.sign)."""
        return dkim_sign(raw, self.dkim_keys, pieces=pieces) if self.dkim_keys else raw


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]*")


def _mailto_subject(token: str) -> str:
    """quote("unsubscribe " + token): our tokens are URL-safe already, so only the space needs escaping
    (urllib's quote costs ~0.03 ms per email)."""
    return "unsubscribe%20" + token if _URL_SAFE.fullmatch(token) else quote("unsubscribe " + token)


@functools.lru_cache(maxsize=8)  # a chunk of emails shares one `now`
def _date_header(now: datetime) -> str:
    return email.utils.format_datetime(now)


def _finish_text(text: str) -> str:
    return text.strip() + "\n"


def _body_templates(text: render_plan.Part, html: render_plan.Part) -> dict:
    """A plan's MIME bodies encoded ahead, when its pieces allow (else none: body_part per email).
    The text's are of the text as `_finish_text` leaves it."""
    pieces, strip_values = render_plan.finished_pieces(text)
    try:
        return {"text_body": mime.BodyTemplate("plain", pieces), "html_body": mime.BodyTemplate("html", html.pieces),
                "strip_values": strip_values}
    except ValueError:
        return {}


def _ascii_header(name: str, value: str) -> tuple[str, str]:
    """Our own headers are ASCII already but for display names (List-Id's title, Reply-To's name)."""
    if value.isascii():
        return name, value
    if name == "Reply-To":
        display, addr = email.utils.parseaddr(value)
        return name, mime.address(header_text(display), ascii_address(addr))
    if name == "List-Id":
        phrase, _, rest = value.rpartition(" <")
        return name, f"{mime.phrase(phrase)} <{rest}"
    return name, mime.unstructured(value)


def with_utm(url: str, utm: dict[str, str]) -> str:
    """`url` with utm_source/utm_medium/utm_campaign appended, keeping any it already has. Only
    resource links go through here: unsubscribe, preference and view links stay untagged."""
    if not utm:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    query += [(f"utm_{k}", v) for k, v in utm.items() if f"utm_{k}" not in present]
    return urlunsplit(parts._replace(query=urlencode(query)))


# -- double opt-in confirmations ---------------------------------------------------------------------
# Emails that carry one link the reader asked for, all through one door: (subject, preheader, why) by kind;
# the templates are `<kind>.html`/`.txt` in the campaign's folder, else in `_base/`. None: the campaign's.
TRANSACTIONAL = {
    "confirm": (None, "Please confirm your email address", None),
    # a reader who unsubscribed and signed up again: "do you want to come back?"
    "comeback": ("Would you like to hear from me again?", "One click brings you back; without it, nothing is sent.",
                 None),
    # the reader's own data, opened only from their own inbox (a forwarded preference link cannot reach it)
    "data_export": ("Your link to download your data", "You asked to download your data. The link works for an hour.",
                    "You're getting this email because someone asked to download the data we hold about this address."),
    "data_erase": ("Your link to erase your data", "You asked to erase your data. The link works for an hour.",
                   "You're getting this email because someone asked to erase the data we hold about this address."),
}


def compose_confirmation(composer: Composer, *, campaign: Campaign, to_email: str, name: str, confirm_url: str,
                         unsubscribe_url: str, now: datetime, pending_id: int, expiry_days: int,
                         kind: str = "confirm") -> OutboundEmail:
    """The confirmation email of a double opt-in campaign: `<campaign>/confirm.*` when the campaign has its
    own, else `_base/confirm.*`; the other TRANSACTIONAL kinds the same way (a returning reader's come-back
    email, the reader's data links). A transactional email: no List-Unsubscribe headers, not in the message
    log; its footer still names why it came and links the unsubscribe page."""
    import secrets

    first = one_line(name).split(" ")[0] if one_line(name) else ""
    subject_text, preheader, why = TRANSACTIONAL[kind]
    subject = header_text(subject_text or campaign.confirm_subject)[:250]
    ctx = {
        "greeting": f"Hi {first}," if first else "Hi there,", "subject": subject, "confirm_url": confirm_url,
        "campaign": {"key": campaign.key, "title": campaign.title, "sender_name": campaign.sender_name},
        "unsubscribe_url": unsubscribe_url, "postal_address": composer.postal_address, "base_url": composer.base_url,
        "why": why or f"You're getting this email because this address was entered to get the {campaign.title}.",
        "preheader": preheader, "expiry_days": expiry_days,
    }
    base = composer.sources.add(campaign) if campaign.read(f"{kind}.html") is not None else "_base"
    text = composer.env.get_template(f"{base}/{kind}.txt").render(ctx).strip() + "\n"
    html = composer.inliner.inline(composer.env.get_template(f"{base}/{kind}.html").render(ctx))
    from_header = composer.from_header(campaign)
    sender = ascii_address(email.utils.parseaddr(from_header)[1])
    recipient = ascii_address(to_email)
    headers = (("Message-ID", new_message_id(from_header, -pending_id, secrets.token_hex(10))),
               ("Date", email.utils.format_datetime(now)))
    msg = EmailMessage(policy=MIME_POLICY)
    msg["From"] = from_header
    local, _, rdomain = recipient.rpartition("@")
    msg["To"] = Address(display_name=header_text(name), username=local, domain=rdomain)
    msg["Subject"] = subject
    for key, value in headers:
        msg[key] = value
    msg.set_content(text, cte="quoted-printable")
    msg.add_alternative(html, subtype="html", cte="quoted-printable")
    raw = msg.as_bytes()
    check_header_block(raw, ALLOWED_HEADERS)
    return OutboundEmail(message_pk=-pending_id, envelope_from=composer.envelope_sender(sender), recipient=recipient,
                         from_header=from_header, to_header=str(msg["To"]), subject=subject, text=text, html=html,
                         headers=headers, raw=composer.sign_message(raw),
                         idempotency_key=f"drip-confirm-{pending_id}-{secrets.token_hex(4)}")
