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
