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
@click.option("--spam-score/--no-spam-score", default=True, show_default=True,
              help="Score every step with SpamAssassin (local rules) when it is installed.")
def check(spam_score: bool) -> None:
    """Load, render and lint every campaign step (Gmail clipping, text part, subject, images, links), and
    score each with SpamAssassin when it is installed (a score above 0.5 is an error)."""
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
    errors = sum(p.level == "error" for p in problems) + (_spam_scores(loaded, composer) if spam_score else 0)
    steps = sum(len(c.steps) for c in loaded.values())
    click.echo(f"campaigns check: {len(loaded)} campaign(s), {steps} step(s): {errors} error(s), "
               f"{len(problems) - errors} warning(s)")
    sys.exit(1 if errors else 0)


def _spam_scores(loaded, composer) -> int:
    """Each step's SpamAssassin score (local rules) when the program is installed; errors above the limit."""
    from service.compose import spamscore

    if spamscore.spamassassin_path() is None:
        click.echo("spamassassin: not installed, no scores (Debian: apt-get install spamassassin)")
        return 0
    errors = 0
    for campaign, step, found in spamscore.score_campaigns(loaded, composer):
        over = found.score > spamscore.LIMIT
        errors += over
        shown = round(found.score, 1) + 0.0  # + 0.0: a tiny negative score prints as 0.0, not -0.0
        click.echo(f"{campaign}/{step}: {'error: ' if over else ''}SpamAssassin score {shown:.1f} "
                   f"(limit {spamscore.LIMIT}; tests: {', '.join(found.content_tests) or 'none'})")
    return errors


@campaigns.command("diff")
def diff_command() -> None:
    """Before deploying an edit: how many enrolled readers each change affects and what each gets next.

    Compares the campaign files in DRIP_TEMPLATES_DIR with where enrolled readers stand in the database
    (see docs/campaigns.md, "Editing a live campaign"). Changes nothing."""
    from service.enrollment.live_edits import diff
    from service.runtime import build_runtime

    try:
        rt = build_runtime(Settings.from_env(), pool_size=1)
    except (ConfigError, CampaignError) as exc:
        raise click.ClickException(str(exc)) from None
    with rt.sessions() as session:
        lines = diff(session, rt.campaigns)
    for line in lines:
        click.echo(line.line())
    changed = sum(line.readers for line in lines if line.change != "unchanged")
    click.echo(f"campaigns diff: {changed} enrolled reader(s) affected by the files as they are now")
