"""Campaign versions in the database: every publish stores the campaign's files as a new numbered version
with who and when; the newest version of each campaign is the one sent. Versions are never changed or
deleted: restoring an old one publishes its files again as the next number.

`email_templates/<key>/` stays the format a campaign ships in: `import_folder` publishes a folder as a
version, `export_version` writes one back out, so a campaign can live in git as well.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.models import CampaignVersion

# The files a campaign folder may hold: its definition and the step bodies.
SUFFIXES = (".toml", ".md", ".html", ".txt")


def folder_files(directory: Path) -> dict[str, str]:
    """A campaign folder's files as {name: text} (campaign.toml and the templates; nothing else)."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.iterdir())
            if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith(".")}


def digest(files: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(files), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def latest(session: Session, campaign: str) -> CampaignVersion | None:
    return session.scalars(select(CampaignVersion).where(CampaignVersion.campaign == campaign)
                           .order_by(CampaignVersion.version.desc()).limit(1)).first()


def history(session: Session, campaign: str) -> list[CampaignVersion]:
    return list(session.scalars(select(CampaignVersion).where(CampaignVersion.campaign == campaign)
                                .order_by(CampaignVersion.version.desc())))


def get(session: Session, campaign: str, version: int) -> CampaignVersion | None:
    return session.scalars(select(CampaignVersion).where(CampaignVersion.campaign == campaign,
                                                         CampaignVersion.version == version)).first()


def stamp(session: Session) -> tuple[int, int]:
    """(how many versions, the newest id): it changes with every publish, and costs one small query; a
    worker compares it each pass to know whether to load anything."""
    count, newest = session.execute(select(func.count(CampaignVersion.id), func.max(CampaignVersion.id))).one()
    return int(count or 0), int(newest or 0)


def published(session: Session) -> list[CampaignVersion]:
    """The newest version of every campaign that has one."""
    newest = (select(CampaignVersion.campaign, func.max(CampaignVersion.version).label("v"))
              .group_by(CampaignVersion.campaign).subquery())
    return list(session.scalars(select(CampaignVersion).join(
        newest, (newest.c.campaign == CampaignVersion.campaign) & (newest.c.v == CampaignVersion.version))
        .order_by(CampaignVersion.campaign)))


def publish(session: Session, campaign: str, files: Mapping[str, str], *, by: str, source: str, now: datetime,
            note: str = "") -> CampaignVersion:
    """Store `files` as the campaign's next version. The caller checks the files first (a version is sent
    as soon as a worker sees it) and commits; the unique (campaign, version) key makes two publishes at
    once fail rather than share a number."""
    current = latest(session, campaign)
    row = CampaignVersion(campaign=campaign, version=(current.version if current else 0) + 1, files=dict(files),
                          digest=digest(files), source=source, published_by=by, published_at=now, note=note or None)
    session.add(row)
    session.flush()
    return row


def import_folder(session: Session, directory: Path, *, by: str, now: datetime,
                  only_if: str = "changed") -> CampaignVersion | None:
    """Publish the folder as a new version when its files differ from the newest version (`only_if`
    "changed"), or only when the campaign has no version yet ("missing"). None when nothing was published."""
    files = folder_files(directory)
    current = latest(session, directory.name)
    if current is not None and (only_if == "missing" or current.digest == digest(files)):
        return None
    return publish(session, directory.name, files, by=by, source="import", now=now,
                   note=f"imported from {directory}")


def export_version(row: CampaignVersion, directory: Path) -> list[Path]:
    """Write a version's files into `directory` (created if missing); files of the folder that the version
    does not have (a template it replaced by Markdown) are removed, so the folder is the version."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.iterdir():
        if stale.is_file() and stale.suffix in SUFFIXES and stale.name not in row.files:
            stale.unlink()
    written = []
    for name, text in sorted(row.files.items()):
        path = directory / Path(name).name  # a stored name is a plain file name; never a path outside
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def sync_folders(session: Session, folders: Mapping[str, object], *, now: datetime) -> list[str]:
    """At start-up: every campaign folder with no version yet is published as version 1 (a fresh install
    sends exactly what it ships), and a folder changed since the newest version is published again, as
    long as that newest version was published by this start-up rule too (deploying edited files keeps
    working). A version someone chose (published in the console, restored, or `drip campaigns import`ed)
    is not replaced by the folder: the returned notes say so."""
    notes = []
    for key, campaign in sorted(folders.items()):
        directory = getattr(campaign, "directory", None)
        if directory is None or getattr(campaign, "files", None) is not None:
            continue
        files = folder_files(directory)
        current = latest(session, key)
        if current is not None and current.digest == digest(files):
            continue
        if current is None or current.source == "files":
            row = publish(session, key, files, by="email_templates", source="files", now=now,
                          note=f"imported from {directory}")
            notes.append(f"{key}: the folder was published as version {row.version}")
        else:
            how = "imported" if current.source == "import" else "published in the console"
            notes.append(f"{key}: the folder differs from version {current.version}, {how} by "
                         f"{current.published_by}, which is what is sent; `drip campaigns export {key}` writes it to "
                         f"the folder, `drip campaigns import {key}` publishes the folder instead")
    return notes
