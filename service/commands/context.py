"""What every `drip` command starts from: the settings from the environment and the runtime built from
them, each failing with one line that names the problem instead of a traceback."""
from __future__ import annotations

import click

from service.core.config import ConfigError, Settings


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def load_runtime(settings: Settings, **kw):
    from service.campaigns.model import CampaignError
    from service.runtime import build_runtime

    try:
        return build_runtime(settings, **kw)
    except CampaignError as exc:
        raise click.ClickException(f"invalid campaign: {exc}") from None


def sync_campaign_folders(rt) -> None:
    """Campaign folders reach the database at start-up (see campaigns/versions.py, sync_folders): a fresh
    install sends what it ships, and deployed file edits are published unless the console published since."""
    import logging

    from sqlalchemy.exc import DBAPIError, IntegrityError

    from service.campaigns.versions import sync_folders
    from service.core.db import utcnow

    log = logging.getLogger("service.campaigns")
    try:
        with rt.sessions() as session, session.begin():
            notes = sync_folders(session, rt.campaigns.folders, now=utcnow())
    except IntegrityError:  # another process started at the same moment and published them
        notes = []
    except DBAPIError as exc:  # not migrated yet: the folders are sent as they are
        log.warning("campaign folders not published to the database (%s); run `drip db upgrade`",
                    exc.__class__.__name__)
        return
    for note in notes:
        log.log(logging.WARNING if "differs" in note else logging.INFO, "%s", note)
    rt.campaigns.refresh()
