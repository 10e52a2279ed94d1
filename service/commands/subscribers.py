"""`drip subscribers export EMAIL` (everything stored, as JSON) and `drip subscribers erase EMAIL` (GDPR)."""
from __future__ import annotations

import json

import click

from service.commands.context import load_runtime, load_settings


def _find(session, email: str):
    from service.operator.subscribers import find_by_email

    person = find_by_email(session, email)
    if person is None:
        raise click.ClickException(f"no subscriber with the address {email!r}")
    return person


def register(main: click.Group) -> None:

    @main.group()
    def subscribers() -> None:
        """One reader's data: export or erase (GDPR)."""

    @subscribers.command("export")
    @click.argument("email")
    def export(email: str) -> None:
        """Print everything stored about EMAIL as JSON."""
        from service.audience.privacy import export_subscriber
        from service.core.db import utcnow

        rt = load_runtime(load_settings())
        with rt.sessions() as session, session.begin():
            data = export_subscriber(session, _find(session, email), now=utcnow(), by="drip subscribers export")
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))

    @subscribers.command("erase")
    @click.argument("email")
    @click.option("--yes", is_flag=True, help="do not ask for confirmation")
    def erase(email: str, yes: bool) -> None:
        """Delete EMAIL's subscriber, consents, enrollments, emails and events; keep only a hash, suppressed."""
        from service.audience.privacy import erase_subscriber
        from service.core.db import utcnow

        if not yes:
            click.confirm(f"Erase {email} for good?", abort=True)
        rt = load_runtime(load_settings())
        with rt.sessions() as session, session.begin():
            digest = erase_subscriber(session, _find(session, email), utcnow(), by="drip subscribers erase")
        click.echo(f"erased; the address is suppressed as sha256 {digest}")
