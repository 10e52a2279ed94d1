"""`drip prune`: apply DRIP_EVENT_RETENTION_DAYS now (workers also do it once an hour)."""
from __future__ import annotations

import click

from service.commands.context import load_runtime, load_settings


def register(main: click.Group) -> None:
    @main.command()
    @click.option("--days", type=click.IntRange(min=30), default=None,
                  help="retention in days (default: DRIP_EVENT_RETENTION_DAYS)")
    def prune(days: int | None) -> None:
        """Delete events and stored email bytes older than the retention period."""
        from service.core.db import utcnow
        from service.dispatch.retention import prune as do_prune

        settings = load_settings()
        days = days or settings.event_retention_days
        if not days:
            raise click.ClickException("no retention set: pass --days N or set DRIP_EVENT_RETENTION_DAYS")
        rt = load_runtime(settings)

        def progress(so_far) -> None:
            click.echo(f"\rprune: {so_far.events} events and {so_far.contents} stored emails so far", err=True,
                       nl=False)
        pruned = do_prune(rt.sessions, now=utcnow(), days=days, progress=progress)
        click.echo(f"prune: {pruned.events} events and {pruned.contents} stored emails older than {days} days deleted")
