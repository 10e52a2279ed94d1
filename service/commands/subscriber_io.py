"""`drip import-subscribers FILE.csv --campaign C [--skip-welcome]` and `drip export-subscribers`.

Named apart from the `drip subscribers ...` group, which exports or erases one person.
"""
from __future__ import annotations

import codecs
import csv
import sys
from itertools import islice
from pathlib import Path

import click

BATCH = 500


def register(main: click.Group) -> None:
    main.add_command(import_subscribers)
    main.add_command(export_subscribers)


def _runtime():
    from service.commands.context import load_runtime, load_settings

    return load_runtime(load_settings(), pool_size=1)  # refuses a database that needs `drip db upgrade`


@click.command("import-subscribers")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--campaign", required=True, help="campaign to enroll everyone in")
@click.option("--skip-welcome", is_flag=True, help="start at the second step (they had the welcome elsewhere)")
@click.option("--encoding", default="auto", show_default=True,
              help="the file's text encoding (utf-8, cp1252, latin-1, utf-16, ...); auto reads UTF-8 with or "
                   "without a BOM, UTF-16 with a BOM, and otherwise Windows-1252, as Excel writes on Windows")
def import_subscribers(csv_file: Path, campaign: str, skip_welcome: bool, encoding: str) -> None:
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
    encoding = _text_encoding(csv_file, encoding)
    try:
        with csv_file.open(newline="", encoding=encoding) as fh:
            total = max(0, sum(1 for _ in fh) - 1)  # reads it all: a wrong encoding stops here, before any row
    except UnicodeDecodeError as exc:
        shown = "UTF-8" if encoding == "utf-8-sig" else encoding
        raise click.ClickException(f"{csv_file.name}: not {shown} text (byte 0x{exc.object[exc.start]:02x} at "
                                   f"offset {exc.start}); pass --encoding with the file's encoding (e.g. cp1252) "
                                   "or save it as UTF-8") from None
    report, seen, done = ImportReport(), {}, 0
    with csv_file.open(newline="", encoding=encoding) as fh:
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


def _text_encoding(path: Path, requested: str) -> str:
    """The codec to read the CSV with: the one asked for, or detected. Detection knows the encodings that
    spreadsheets write: UTF-8 (a BOM is dropped), UTF-16 with its BOM, and Windows-1252 for anything else
    (Excel's 'CSV' on Windows; Latin-1 where a byte is undefined in 1252), said on standard error."""
    if requested.lower() != "auto":
        try:
            name = codecs.lookup(requested).name
        except LookupError:
            raise click.BadParameter(f"unknown encoding {requested!r} (e.g. utf-8, cp1252, latin-1, utf-16)",
                                     param_hint="--encoding") from None
        return "utf-8-sig" if name == "utf-8" else name
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        data.decode("utf-8")
        return "utf-8-sig"
    except UnicodeDecodeError:
        pass
    try:
        data.decode("cp1252")
        found = "cp1252"
    except UnicodeDecodeError:
        found = "latin-1"
    click.echo(f"{path.name}: not UTF-8; reading it as {found} (pass --encoding to choose another)", err=True)
    return found


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
