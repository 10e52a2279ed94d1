"""`drip campaigns ...`: commands about campaign files. `check` loads every campaign, renders every step with
sample data (text and HTML) and reports content problems; it exits 1 when any is an error."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from service.campaigns.loader import load_campaigns
from service.campaigns.model import CampaignError
from service.core.config import ConfigError, Settings


def register(main: click.Group) -> None:
    main.add_command(campaigns)


@click.group()
def campaigns() -> None:
    """Campaign files."""


@campaigns.command("check")
def check() -> None:
    """Load, render and lint every campaign step (Gmail clipping, text part, subject, images, links)."""
    from service.compose.composer import Composer
    from service.compose.lint import lint_campaign

    try:
        settings = Settings.from_env()
        loaded = load_campaigns(Path(settings.templates_dir))
    except (ConfigError, CampaignError) as exc:
        raise click.ClickException(str(exc)) from None
    composer = Composer(templates_dir=Path(settings.templates_dir), base_url=settings.base_url,
                        postal_address=settings.postal_address, from_override=settings.from_address)
    problems = [p for campaign in loaded.values() for p in lint_campaign(campaign, composer)]
    for problem in problems:
        click.echo(problem.line())
    errors = sum(p.level == "error" for p in problems)
    steps = sum(len(c.steps) for c in loaded.values())
    click.echo(f"campaigns check: {len(loaded)} campaign(s), {steps} step(s): {errors} error(s), "
               f"{len(problems) - errors} warning(s)")
    sys.exit(1 if errors else 0)


@campaigns.command("diff")
def diff_command() -> None:
    """Before deploying an edit: how many enrolled readers each change affects and what each gets next.

    Compares the campaign files in DRIP_TEMPLATES_DIR with where enrolled readers stand in the database
    (see docs/campaigns.md, "Editing a live campaign"). Changes nothing."""
    from service.commands.context import load_runtime, load_settings
    from service.enrollment.live_edits import diff

    rt = load_runtime(load_settings(), pool_size=1)  # refuses a database that needs `drip db upgrade`
    with rt.sessions() as session:
        lines = diff(session, rt.campaigns)
    for line in lines:
        click.echo(line.line())
    changed = sum(line.readers for line in lines if line.change != "unchanged")
    click.echo(f"campaigns diff: {changed} enrolled reader(s) affected by the files as they are now")
