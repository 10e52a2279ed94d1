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
    from service.commands.context import load_runtime, load_settings
    from service.enrollment.live_edits import diff

    rt = load_runtime(load_settings(), pool_size=1)  # refuses a database that needs `drip db upgrade`
    with rt.sessions() as session:  # the folders as they are on disk, not the versions in the database
        lines = diff(session, rt.campaigns.folders)
    for line in lines:
        click.echo(line.line())
    changed = sum(line.readers for line in lines if line.change != "unchanged")
    click.echo(f"campaigns diff: {changed} enrolled reader(s) affected by the files as they are now")


@campaigns.command("import")
@click.argument("keys", nargs=-1)
@click.option("--from", "source", default=None, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="folder holding the campaign folders  [default: DRIP_TEMPLATES_DIR]")
def import_command(keys: tuple[str, ...], source: Path | None) -> None:
    """Publish campaign folders as new versions in the database (each folder whose files differ from the
    campaign's newest version). Checked like a publish in the console: the files load, fit with the other
    campaigns and every step renders without a content error."""
    from service.campaigns.loader import campaign_from_files
    from service.campaigns.versions import folder_files, import_folder
    from service.commands.context import load_runtime
    from service.compose.lint import lint_campaign
    from service.core.db import utcnow
    from service.runtime import make_composer

    settings = _settings()
    folder_root = source or Path(settings.templates_dir)
    try:
        found = load_campaigns(folder_root)
    except CampaignError as exc:
        raise click.ClickException(str(exc)) from None
    unknown = [k for k in keys if k not in found]
    if unknown:
        raise click.ClickException(f"no campaign folder {unknown[0]!r} under {folder_root} "
                                   f"(have: {', '.join(sorted(found))})")
    rt = load_runtime(settings, pool_size=1)
    chosen = {k: campaign_from_files(k, folder_files(found[k].directory), version=0) for k in (keys or sorted(found))}
    try:
        trial = {**rt.campaigns, **chosen}
        from service.campaigns.loader import check_set

        check_set(trial)
    except CampaignError as exc:
        raise click.ClickException(str(exc)) from None
    composer = make_composer(settings)
    errors = [p for c in chosen.values() for p in lint_campaign(c, composer) if p.level == "error"]
    for problem in errors:
        click.echo(problem.line(), err=True)
    if errors:
        raise click.ClickException(f"nothing imported: {len(errors)} content error(s)")
    with rt.sessions() as session, session.begin():
        for key in chosen:
            row = import_folder(session, folder_root / key, by="drip campaigns import", now=utcnow())
            click.echo(f"{key}: published as version {row.version}" if row else f"{key}: unchanged")


@campaigns.command("export")
@click.argument("keys", nargs=-1)
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="folder to write the campaign folders into  [default: DRIP_TEMPLATES_DIR]")
@click.option("--version", "version", default=None, type=int, help="a version other than the newest (one campaign)")
def export_command(keys: tuple[str, ...], out: Path | None, version: int | None) -> None:
    """Write campaigns as published in the database back to their folders (campaign.toml and the step files),
    e.g. to keep them in git. A campaign never published is left as its folder is."""
    from service.campaigns import versions
    from service.commands.context import load_runtime

    settings = _settings()
    if version is not None and len(keys) != 1:
        raise click.UsageError("--version needs exactly one campaign")
    rt = load_runtime(settings, pool_size=1)
    target = out or Path(settings.templates_dir)
    with rt.sessions() as session:
        for key in keys or sorted(rt.campaigns):
            if key not in rt.campaigns:
                raise click.ClickException(f"no campaign {key!r} (have: {', '.join(sorted(rt.campaigns))})")
            row = versions.get(session, key, version) if version is not None else versions.latest(session, key)
            if row is None:
                click.echo(f"{key}: no version in the database" + (f" numbered {version}" if version else ""))
                continue
            written = versions.export_version(row, target / key)
            click.echo(f"{key}: version {row.version} written to {target / key} ({len(written)} files)")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
