"""Editing a campaign in the console: a draft of its files, checked on every change, its effect on enrolled
readers shown before it is published, then published as the campaign's next version.

A draft holds the campaign's files as they would be published (campaign.toml and the step bodies).
Every change goes through the same loader and checks as a folder on disk, and through the same place
rule as file edits (enrollment/live_edits.py): keys are never renamed, a new step may not reuse a key
that was ever sent in this campaign (readers who had the old one would skip the new one), and a step
another campaign continues into cannot be removed.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from service.campaigns import versions
from service.campaigns.catalog import Catalog
from service.campaigns.loader import campaign_from_files
from service.campaigns.model import KEY_RE, Campaign, CampaignError, Delay, Step
from service.campaigns.toml_text import dumps
from service.core.models import CampaignDraft, CampaignVersion, Message
from service.enrollment.live_edits import DiffLine, diff, reach


class EditError(ValueError):
    """A change the console refuses, with the form field it is about."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message, self.field = message, field


@dataclass(frozen=True)
class StepEdit:
    """What the step editor's form sends."""

    subject: str
    preheader: str = ""
    delay: str = "7d"
    send_hour: str = ""  # "" = the campaign's
    body_format: str = "markdown"  # or "html": the hand-written pair
    markdown: str = ""
    html: str = ""
    text: str = ""


@dataclass(frozen=True)
class Draft:
    key: str
    files: dict[str, str]
    base_version: int  # the published version it started from (0: the folder)
    saved: bool  # False: no draft yet, these are the published files
    note: str = ""
    updated_by: str = ""
    updated_at: datetime | None = None

    def campaign(self) -> Campaign:
        return campaign_from_files(self.key, self.files, version=0)


# -- reading ---------------------------------------------------------------------------------------------
def published_files(campaign: Campaign) -> dict[str, str]:
    return dict(campaign.files) if campaign.files is not None else versions.folder_files(campaign.directory)


def load_draft(session: Session, catalog: Catalog, key: str) -> Draft:
    row = session.get(CampaignDraft, key)
    if row is not None:
        return Draft(key, dict(row.files), row.base_version, True, row.note or "", row.updated_by, row.updated_at)
    live = catalog[key]
    return Draft(key, published_files(live), live.version, False)


def step_body(draft: Draft, step: Step) -> StepEdit:
    """The editor's fields for one step of the draft."""
    md = draft.files.get(f"{step.template}.md")
    return StepEdit(subject=step.subject, preheader=step.preheader, delay=_delay_text(draft, step.key),
                    send_hour="" if step.send_hour is None else str(step.send_hour),
                    body_format="markdown" if md is not None else "html", markdown=md if md is not None else
                    _content_block(draft.files.get(f"{step.template}.txt", "")),
                    html=draft.files.get(f"{step.template}.html", ""), text=draft.files.get(f"{step.template}.txt", ""))


def _delay_text(draft: Draft, step_key: str) -> str:
    for entry in tomllib.loads(draft.files["campaign.toml"]).get("steps", []):
        if entry.get("key") == step_key:
            return str(entry.get("delay", "7d"))
    return "7d"


def _content_block(text_template: str) -> str:
    """A hand-written step's text part, as the start of its Markdown body (the words without the layout)."""
    start = text_template.find("{% block content %}")
    end = text_template.rfind("{% endblock %}")
    if start < 0 or end < start:
        return text_template
    return text_template[start + len("{% block content %}"):end].strip() + "\n"


# -- changing the files (pure: files in, files out, checked) ------------------------------------------------
def _steps(files: dict[str, str]) -> tuple[dict, list[dict]]:
    data = tomllib.loads(files["campaign.toml"])
    return data, data.setdefault("steps", [])


def _checked(key: str, files: dict[str, str], data: dict) -> dict[str, str]:
    out = {**files, "campaign.toml": dumps(data)}
    try:
        campaign_from_files(key, out, version=0)
    except CampaignError as exc:
        raise EditError(str(exc).split(": ", 1)[-1]) from None
    return out


def apply_step(key: str, files: dict[str, str], step_key: str, edit: StepEdit) -> dict[str, str]:
    """The files with one step's subject, preheader, delay, send hour and body replaced."""
    data, steps = _steps(files)
    entry = next((s for s in steps if s.get("key") == step_key), None)
    if entry is None:
        raise EditError(f"no step {step_key!r}")
    subject = " ".join(edit.subject.split())
    if not subject:
        raise EditError("the subject is empty", "subject")
    try:
        Delay.parse(edit.delay)
    except ValueError as exc:
        raise EditError(str(exc), "delay") from None
    entry.update(subject=subject, delay=edit.delay.strip(), preheader=" ".join(edit.preheader.split()))
    if not entry["preheader"]:
        entry.pop("preheader")
    if edit.send_hour.strip():
        if not edit.send_hour.strip().isdigit() or not 0 <= int(edit.send_hour) <= 23:
            raise EditError("the send hour is a whole hour 0-23, or empty for the campaign's", "send_hour")
        entry["send_hour"] = int(edit.send_hour)
    else:
        entry.pop("send_hour", None)
    template = entry.get("template", step_key)
    shared = sum(1 for s in steps if s.get("template", s.get("key")) == template) > 1
    files = dict(files)
    if edit.body_format == "markdown":
        if not edit.markdown.strip():
            raise EditError("the body is empty", "markdown")
        files[f"{template}.md"] = edit.markdown.replace("\r\n", "\n")
        if not shared:
            files.pop(f"{template}.html", None)
            files.pop(f"{template}.txt", None)
    else:
        if not edit.html.strip() or not edit.text.strip():
            raise EditError("both the HTML and the text part are needed", "html" if not edit.html.strip() else "text")
        files[f"{template}.html"] = edit.html.replace("\r\n", "\n")
        files[f"{template}.txt"] = edit.text.replace("\r\n", "\n")
        files.pop(f"{template}.md", None)
    return _checked(key, files, data)


NEW_BODY = "{{ greeting }}\n\nWrite this week's email here.\n\nTalk soon\n"


def add_step(session: Session, key: str, files: dict[str, str], step_key: str, subject: str,
             delay: str) -> dict[str, str]:
    """A new last step with a Markdown body to fill in."""
    data, steps = _steps(files)
    step_key = step_key.strip()
    if not KEY_RE.match(step_key):
        raise EditError("a step key is a-z, 0-9 and '-' (e.g. week-10)", "key")
    if any(s.get("key") == step_key for s in steps):
        raise EditError(f"the campaign already has a step {step_key!r}", "key")
    if session.scalar(select(exists().where(Message.campaign == key, Message.step_key == step_key))):
        raise EditError(f"step key {step_key!r} was sent before in this campaign: readers who had it would skip "
                        "the new step. Pick a new key.", "key")
    if f"{step_key}.md" in files or f"{step_key}.html" in files:
        raise EditError(f"the campaign already has a file {step_key}.*: pick another key", "key")
    if not " ".join(subject.split()):
        raise EditError("the subject is empty", "subject")
    try:
        Delay.parse(delay)
    except ValueError as exc:
        raise EditError(str(exc), "delay") from None
    steps.append({"key": step_key, "delay": delay.strip(), "subject": " ".join(subject.split())})
    return _checked(key, {**files, f"{step_key}.md": NEW_BODY}, data)


def move_step(key: str, files: dict[str, str], step_key: str, offset: int) -> dict[str, str]:
    data, steps = _steps(files)
    at = next((i for i, s in enumerate(steps) if s.get("key") == step_key), None)
    if at is None:
        raise EditError(f"no step {step_key!r}")
    to = max(0, min(len(steps) - 1, at + offset))
    steps.insert(to, steps.pop(at))
    return _checked(key, files, data)


def remove_step(key: str, files: dict[str, str], step_key: str) -> dict[str, str]:
    data, steps = _steps(files)
    entry = next((s for s in steps if s.get("key") == step_key), None)
    if entry is None:
        raise EditError(f"no step {step_key!r}")
    if len(steps) == 1:
        raise EditError("a campaign needs at least one step")
    steps.remove(entry)
    template = entry.get("template", step_key)
    files = dict(files)
    if not any(s.get("template", s.get("key")) == template for s in steps):
        for ext in ("md", "html", "txt"):
            files.pop(f"{template}.{ext}", None)
    return _checked(key, files, data)


# -- the draft row ----------------------------------------------------------------------------------------------
def save_draft(session: Session, catalog: Catalog, draft: Draft, files: dict[str, str], *, by: str,
               now: datetime, note: str | None = None) -> Draft:
    """Store the changed files as the campaign's draft, after checking them with every other campaign."""
    campaign = campaign_from_files(draft.key, files, version=0)
    try:
        catalog.with_draft(campaign)
    except CampaignError as exc:
        raise EditError(str(exc)) from None
    row = session.get(CampaignDraft, draft.key)
    if row is None:
        row = CampaignDraft(campaign=draft.key, base_version=draft.base_version, files=files, updated_by=by,
                            updated_at=now, note=note)
        session.add(row)
    else:
        row.files, row.updated_by, row.updated_at = files, by, now
        if note is not None:
            row.note = note
    session.flush()
    return load_draft(session, catalog, draft.key)


def discard(session: Session, key: str) -> None:
    row = session.get(CampaignDraft, key)
    if row is not None:
        session.delete(row)


def restore(session: Session, catalog: Catalog, key: str, version: int, *, by: str, now: datetime) -> Draft:
    """Put an old version's files in the draft; publishing it makes them the next version."""
    row = versions.get(session, key, version)
    if row is None:
        raise EditError(f"no version {version} of {key}")
    discard(session, key)
    session.flush()
    current = load_draft(session, catalog, key)
    return save_draft(session, catalog, current, dict(row.files), by=by, now=now,
                      note=f"restores version {version}")


# -- before publishing: what changes, for whom ----------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    step: str
    what: str  # "added", "removed", "moved", or the fields changed ("subject, body")
    will_get: int  # enrolled readers who will get this step (for a removed step: who would have)
    next_up: int  # ... for whom it is the very next step


@dataclass(frozen=True)
class Impact:
    changes: list[Change] = field(default_factory=list)
    groups: list[DiffLine] = field(default_factory=list)  # what `drip campaigns diff` prints

    @property
    def affected(self) -> int:
        return sum(g.readers for g in self.groups if g.change != "unchanged")


def impact(session: Session, live: Campaign, edited: Campaign) -> Impact:
    """Step by step, what the edit changes and how many enrolled readers each change reaches; and the
    groups of `drip campaigns diff` (readers whose place the edit moves, and what they get next)."""
    after, before = reach(session, edited), reach(session, live)
    old = {s.key: s for s in live.steps}
    order_old = [s.key for s in live.steps if edited.step_by_key(s.key)]
    order_new = [s.key for s in edited.steps if s.key in old]
    changes = []
    for step in edited.steps:
        was = old.get(step.key)
        if was is None:
            what = "added"
        else:
            fields = [name for name, a, b in (
                ("subject", was.subject, step.subject), ("preheader", was.preheader, step.preheader),
                ("delay", was.delay, step.delay), ("send hour", was.send_hour, step.send_hour),
                ("send days", was.send_days, step.send_days), ("body", _body(live, was), _body(edited, step)))
                if a != b]
            if order_old.index(step.key) != order_new.index(step.key):
                fields.insert(0, "moved")
            if not fields:
                continue
            what = ", ".join(fields)
        changes.append(Change(step.key, what, *after[step.key]))
    changes += [Change(s.key, "removed", *before[s.key]) for s in live.steps if edited.step_by_key(s.key) is None]
    return Impact(changes, diff(session, {edited.key: edited}))


def same_content(a: dict[str, str], b: dict[str, str]) -> bool:
    """The same campaign: equal values in campaign.toml (the console rewrites its text) and equal bodies."""
    def values(files: dict[str, str]) -> tuple:
        rest = {k: v for k, v in files.items() if k != "campaign.toml"}
        return tomllib.loads(files.get("campaign.toml", "")), rest
    return values(a) == values(b)


def _body(campaign: Campaign, step: Step) -> tuple:
    return tuple(campaign.read(f"{step.template}.{ext}") for ext in ("md", "html", "txt"))


# -- publishing ---------------------------------------------------------------------------------------------------
def publish(session: Session, catalog: Catalog, key: str, *, by: str, now: datetime,
            errors: list[str]) -> CampaignVersion:
    """The draft becomes the campaign's next version (the first publish also keeps the folder it replaces as
    version 1, so it can be restored). `errors`: the content lint's errors, which block publishing."""
    row = session.get(CampaignDraft, key)
    if row is None:
        raise EditError("there is no draft to publish")
    current = versions.latest(session, key)
    if (current.version if current else 0) != row.base_version:
        raise EditError(f"version {current.version if current else 0} was published by "
                        f"{current.published_by if current else '?'} after this draft began; discard the draft "
                        "and make the change again on top of it")
    live = catalog.get(key)
    if same_content(row.files, current.files if current else published_files(live) if live is not None else {}):
        raise EditError("the draft is the same as what is sent now: there is nothing to publish")
    if errors:
        raise EditError("fix these first: " + "; ".join(errors))
    campaign = campaign_from_files(key, row.files, version=0)
    try:
        catalog.with_draft(campaign)
    except CampaignError as exc:
        raise EditError(str(exc)) from None
    if current is None:
        folder = catalog.folders.get(key)
        if folder is not None and folder.files is None:
            versions.publish(session, key, versions.folder_files(folder.directory), by="email_templates",
                             source="files", now=now, note="the campaign folder before its first edit in the console")
    published = versions.publish(session, key, dict(row.files), by=by, source="restore" if row.note else "console",
                                 now=now, note=row.note or "")
    session.delete(row)
    session.flush()
    return published
