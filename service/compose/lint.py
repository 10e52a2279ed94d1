"""Content lint for campaigns: what in a rendered email would get it clipped, junked or broken.

Every step is rendered with sample data (text and HTML, exactly as `Composer.render` does for a real reader)
and checked against rules mailbox providers are known to apply. Errors make `drip campaigns check` fail;
warnings are listed.
"""
from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from urllib.parse import urlsplit

from jinja2 import TemplateSyntaxError, nodes

from service.campaigns.model import Campaign, Step
from service.compose.composer import ComposeJob, Composer, with_utm

GMAIL_CLIP_BYTES = 102 * 1024  # Gmail shows "[Message clipped]" past ~102 KB of HTML, hiding the footer
MAX_SUBJECT = 78
MIN_TEXT_CHARS = 300  # below this, with images, an email reads as image-only to spam filters
SHORTENERS = frozenset({
    "bit.ly", "bitly.com", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "buff.ly", "rebrand.ly", "cutt.ly",
    "shorturl.at", "rb.gy", "t.ly", "tiny.cc", "s.id", "lnkd.in", "bl.ink", "v.gd", "soo.gd", "clck.ru",
})
URL_IN_TEXT = re.compile(r"https?://[^\s<>\"')\]]+")
SAMPLE_UNSUBSCRIBE_PATH = "unsubscribe/sample-reader"


@dataclass(frozen=True)
class Problem:
    level: str  # "error" or "warning"
    where: str  # "<campaign file>: step <key>"
    message: str

    def line(self) -> str:
        return f"{self.where}: {self.level}: {self.message}"


class _Html(HTMLParser):
    """Links, images and the visible text of an HTML body."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.images = 0
        self.missing_alt = 0  # <img> without an alt attribute
        self.text: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.links.append(values["href"].strip())
        elif tag == "img":
            self.images += 1
            self.missing_alt += "alt" not in values
        elif tag in ("style", "script", "head", "title"):
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head", "title") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)


def sample_job(campaign: Campaign, step: Step, base_url: str) -> ComposeJob:
    return ComposeJob(
        message_pk=0, message_id="<lint@drip.invalid>", campaign=campaign, step=step,
        to_email="sample.reader@example.com", name="Sample Reader",
        unsubscribe_url=f"{base_url}/{SAMPLE_UNSUBSCRIBE_PATH}", now=datetime.now(UTC),
    )


def lint_campaign(campaign: Campaign, composer: Composer, *, only: str | None = None) -> list[Problem]:
    """Every problem of every step (of step `only`, when given); a step that cannot render is one error."""
    problems: list[Problem] = []
    for step in campaign.steps:
        if only is not None and step.key != only:
            continue
        where = f"{campaign.where}: step {step.key}"
        problems += [Problem("warning", where, message) for message in dropped_text(composer, campaign, step)]
        job = sample_job(campaign, step, composer.base_url)
        try:
            subject, text, html = composer.render(job)
        except Exception as exc:  # a template error is a finding here, not a crash of the command
            at = template_location(exc)  # the template file and line, so the finding points at its source
            problems.append(Problem("error", where, f"does not render: {exc.__class__.__name__}: {exc}"
                                    + (f" (at {at})" if at else "")))
            continue
        problems += [Problem(level, where, _with_location(campaign, step, message)) for level, message in
                     lint_step(campaign, subject, text, html, job.unsubscribe_url, composer.base_url)]
    if campaign.double_opt_in and only is None:
        problems += _lint_confirmation(campaign, composer)
    return problems


def _lint_confirmation(campaign: Campaign, composer: Composer) -> list[Problem]:
    """A double opt-in campaign's confirmation email must render too."""
    from service.compose.composer import compose_confirmation

    try:
        compose_confirmation(composer, campaign=campaign, to_email="sample.reader@example.com", name="Sample Reader",
                             confirm_url=f"{composer.base_url}/confirm/sample", now=datetime.now(UTC),
                             unsubscribe_url=f"{composer.base_url}/{SAMPLE_UNSUBSCRIBE_PATH}", pending_id=1,
                             expiry_days=7)
    except Exception as exc:  # reported like a step that does not render
        at = template_location(exc)
        return [Problem("error", f"{campaign.where}: confirmation email",
                        f"does not render: {exc.__class__.__name__}: {exc}" + (f" (at {at})" if at else ""))]
    return []


def template_location(exc: BaseException) -> str | None:
    """"file:line" of a template error: syntax errors carry it; a runtime error (an unknown variable under
    StrictUndefined) has it in the traceback, whose frames Jinja2 rewrites to template files and lines."""
    if isinstance(exc, TemplateSyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith((".html", ".txt", ".md"))]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def _with_location(campaign: Campaign, step: Step, message: str) -> str:
    """A finding about a link, with the template file and line where that URL is written."""
    m = re.match(r"link (?:to the URL shortener \S+: )?(\S+)", message)
    if not m:
        return message
    url = m.group(1)
    for ext in ("md", "html", "txt"):
        source = campaign.read(f"{step.template}.{ext}")
        for n, line in enumerate((source or "").splitlines(), start=1):
            if url in line:
                where = campaign.directory / f"{step.template}.{ext}" if campaign.files is None else \
                    f"{step.template}.{ext}"
                return f"{where}:{n}: {message}"
    return message


def dropped_text(composer: Composer, campaign: Campaign, step: Step) -> list[str]:
    """A template that extends the layout prints only its blocks: words written outside
    `{% block content %}` never reach the reader. Say so, with the line."""
    found = []
    for ext in ("html", "txt"):
        name = f"{step.template}.{ext}"
        source = campaign.read(name)
        if source is None:  # made from the Markdown body, which has no such outside
            continue
        try:
            tree = composer.env.parse(source)
        except TemplateSyntaxError:
            continue  # reported when the step renders
        if not any(isinstance(node, nodes.Extends) for node in tree.body):
            continue
        for node in tree.body:
            if isinstance(node, nodes.Output) and any(
                    not isinstance(n, nodes.TemplateData) or n.data.strip() for n in node.nodes):
                found.append(f"{name}:{node.lineno}: text outside {{% block content %}} is dropped: the layout "
                             "prints only the blocks (move it inside the block)")
                break
    return found


def lint_step(campaign: Campaign, subject: str, text: str, html: str, unsubscribe_url: str,
              base_url: str) -> list[tuple[str, str]]:
    """(level, message) for one rendered email."""
    found: list[tuple[str, str]] = []
    parsed = _Html()
    parsed.feed(html)
    size = len(html.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        found.append(("error", f"HTML is {size // 1024} KB: Gmail clips past ~102 KB and hides the footer and "
                      "unsubscribe link"))
    if not text.strip():
        found.append(("error", "no text part: the .txt template renders empty"))
    found += _subject(subject)
    visible = " ".join(" ".join(parsed.text).split())
    if parsed.images and len(visible) < MIN_TEXT_CHARS:
        found.append(("error", f"image-only email: {parsed.images} image(s) and {len(visible)} characters of "
                      "text; spam filters read that as an image spam"))
    if parsed.missing_alt:  # screen readers and image-blocking clients need the alt text
        found.append(("error", f"{parsed.missing_alt} image(s) without alt text (use alt=\"\" for decoration)"))
    if not any(link == unsubscribe_url for link in parsed.links):
        found.append(("error", "the HTML body has no unsubscribe link (use {{ unsubscribe_url }})"))
    if unsubscribe_url not in text:
        found.append(("error", "the text body has no unsubscribe link (use {{ unsubscribe_url }})"))
    found += _links(campaign, parsed.links + URL_IN_TEXT.findall(text), unsubscribe_url, base_url)
    return found


def _subject(subject: str) -> list[tuple[str, str]]:
    found = []
    if len(subject) > MAX_SUBJECT:
        found.append(("warning", f"subject is {len(subject)} characters (over {MAX_SUBJECT}; inboxes cut it)"))
    letters = [c for c in subject if c.isalpha()]
    if len(letters) >= 4 and all(c.isupper() for c in letters):
        found.append(("warning", "subject is all capitals (a spam signal)"))
    return found


def _links(campaign: Campaign, links: list[str], unsubscribe_url: str, base_url: str) -> list[tuple[str, str]]:
    """Shorteners, and any http(s) link that is not a [resources] URL, the unsubscribe URL or on the base URL."""
    allowed = {_plain(url) for url in campaign.resources.values()}
    allowed |= {_plain(with_utm(url, campaign.utm)) for url in campaign.resources.values()}  # and their UTM-tagged form
    found: list[tuple[str, str]] = []
    for link in dict.fromkeys(links):  # each link once, in order
        scheme = urlsplit(link).scheme.lower()
        if scheme not in ("http", "https"):
            continue
        host = (urlsplit(link).hostname or "").lower()
        if host in SHORTENERS or host.removeprefix("www.") in SHORTENERS:
            found.append(("error", f"link to the URL shortener {host}: {link} (spam filters block shortened links; "
                          "link to the real address)"))
        elif not (_plain(link) in allowed or link.startswith(unsubscribe_url) or link.startswith(base_url + "/")
                  or link == base_url):
            found.append(("error", f"link {link} is not one of the campaign's [resources] URLs (add it there, or "
                          "fix the template)"))
    return found


def _plain(url: str) -> str:
    """A URL compared without its #fragment and trailing slash."""
    return url.split("#", 1)[0].rstrip("/")
