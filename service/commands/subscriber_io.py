"""`drip import-subscribers FILE.csv --campaign C [--skip-welcome]` and `drip export-subscribers`.

Named apart from the `drip subscribers ...` group, which exports or erases one person.
"""
from __future__ import annotations

import csv
import sys
from itertools import islice
from pathlib import Path

import click

from service.campaigns.model import CampaignError
from service.core.config import ConfigError, Settings

BATCH = 500


def register(main: click.Group) -> None:
    main.add_command(import_subscribers)
    main.add_command(export_subscribers)


def _runtime():
    from service.runtime import build_runtime

    try:
        return build_runtime(Settings.from_env(), pool_size=1)
    except (ConfigError, CampaignError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command("import-subscribers")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--campaign", required=True, help="campaign to enroll everyone in")
@click.option("--skip-welcome", is_flag=True, help="start at the second step (they had the welcome elsewhere)")
def import_subscribers(csv_file: Path, campaign: str, skip_welcome: bool) -> None:
    """Enroll the readers of CSV_FILE (columns: email, optional name, timezone) in a campaign.

    Bad rows are reported with their line and reason; addresses already enrolled are left as they are.
    Exit status 1 when any row was refused."""
    from service.audience.subscriber_io import ImportReport, import_rows, read_csv
    from service.core.db import utcnow

    rt = _runtime()
    target = rt.campaigns.get(campaign)
    if target is None:
        raise click.BadParameter(f"no campaign {campaign!r} (have: {', '.join(sorted(rt.campaigns))})",
                                 param_hint="--campaign")
    with csv_file.open(newline="", encoding="utf-8-sig") as fh:
        total = max(0, sum(1 for _ in fh) - 1)
    report, seen, done = ImportReport(), {}, 0
    with csv_file.open(newline="", encoding="utf-8-sig") as fh:
        try:
            rows = read_csv(fh)
            while batch := list(islice(rows, BATCH)):
                with rt.sessions() as session, session.begin():
                    import_rows(session, batch, campaign=target, source=csv_file.name, now=utcnow(),
                                skip_welcome=skip_welcome, report=report, seen=seen)
                done += len(batch)
                click.echo(f"\rimported {done}/{total} rows", nl=False, err=True)
        except (ValueError, csv.Error) as exc:
            raise click.ClickException(f"{csv_file.name}: {exc}") from None
    click.echo("", err=True)
    for line, reason in report.problems:
        click.echo(f"{csv_file.name}:{line}: {reason}")
    click.echo(f"import: {report.created} enrolled, {report.existing} already enrolled, "
               f"{len(report.problems)} refused")
    sys.exit(1 if report.problems else 0)


@click.command("export-subscribers")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV file to write (default: standard output)")
def export_subscribers(out: Path | None) -> None:
    """Every subscriber as CSV: email, name, timezone, status, created_at, campaigns (key:status ...)."""
    from service.audience.subscriber_io import export_rows

    rt = _runtime()
    with rt.sessions() as session:
        if out is None:
            csv.writer(sys.stdout).writerows(export_rows(session))
            return
        with out.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(export_rows(session))
    click.echo(f"wrote {out}", err=True)
