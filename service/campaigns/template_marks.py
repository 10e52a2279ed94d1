"""Which campaigns' step templates compiled at a previous start, so a start with the same files skips
compiling them again.

A command that sends (`drip tick`, `worker`, `serve`, `web`) refuses to start when a step's template does
not compile (commands/context.py, require_compiling_templates). Compiling needs the composer (Jinja,
markdown-it, the DKIM and DNS modules: ~0.15 s of imports) and every template; a `drip tick` run from cron
every minute with nothing due would pay that each time for files that have not changed. So each campaign's
row in campaign_states keeps the digest of the files that last compiled (with the composer's own code and
the template libraries' files, so a new Drip or a new Jinja compiles them once again); a start compiles
only the campaigns whose digest differs. A template that fails is never recorded, so every start goes on
refusing it until it is fixed.
"""
from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.campaigns import states
from service.campaigns.model import Campaign
from service.campaigns.versions import digest, folder_files
from service.core.models import CampaignState

# The composer's code: what it accepts (its filters, the Markdown steps' conversion) can change with it.
_COMPOSER_CODE = Path(__file__).resolve().parent.parent / "compose"


# The template libraries: an upgrade of Jinja or markdown-it can refuse what compiled before. Their files are
# found without importing them (importing is what a tick with nothing due avoids); a reinstall changes them.
_LIBRARIES = ("jinja2", "markdown_it")


def _composer_code() -> str:
    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in _COMPOSER_CODE.glob("*.py"))
    for name in _LIBRARIES:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        stats.append((name, origin.stat().st_size, origin.stat().st_mtime_ns) if origin else (name, 0, 0))
    return hashlib.sha256(repr(stats).encode()).hexdigest()


def template_digests(campaigns: Mapping[str, Campaign]) -> dict[str, str]:
    """{campaign: digest of its files, its template folder name and the composer's code}."""
    code = _composer_code()
    out = {}
    for key, campaign in campaigns.items():
        files = campaign.files if campaign.files is not None else folder_files(campaign.directory)
        out[key] = hashlib.sha256(f"{code}\n{campaign.template_root}\n{digest(files)}".encode()).hexdigest()
    return out


def unchecked(session: Session, digests: Mapping[str, str]) -> set[str]:
    """The campaigns whose files (by digest) have not compiled at a previous start."""
    marks = dict(session.execute(select(CampaignState.campaign, CampaignState.templates_checked)
                                 .where(CampaignState.campaign.in_(list(digests)))).all())
    return {key for key, d in digests.items() if marks.get(key) != d}


def record(session: Session, digests: Mapping[str, str], *, now: datetime) -> None:
    """Record that these campaigns' files compiled (the caller commits)."""
    for key, state in states.locked(session, digests, now=now).items():
        state.templates_checked = digests[key]
    session.flush()
