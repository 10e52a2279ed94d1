"""`drip subscribers export EMAIL` (everything stored, as JSON) and `drip subscribers erase EMAIL` (GDPR)."""
from __future__ import annotations

import json

import click


def _find(session, email: str):  # noqa: ANN001, ANN202
    from ..subscribers import find_by_email

    person = find_by_email(session, email)
    if person is None:
        raise click.ClickException(f"no subscriber with the address {email!r}")
    return person


def register(main: click.Group) -> None:
    from ..cli import _runtime, _settings

    @main.group()
    def subscribers() -> None:
        """One reader's data: export or erase (GDPR)."""

    @subscribers.command("export")
    @click.argument("email")
    def export(email: str) -> None:
        """Print everything stored about EMAIL as JSON."""
        from ..db import utcnow
        from ..privacy import export_subscriber

        rt = _runtime(_settings())
        with rt.sessions() as session, session.begin():
            data = export_subscriber(session, _find(session, email), now=utcnow(), by="drip subscribers export")
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))

    @subscribers.command("erase")
    @click.argument("email")
    @click.option("--yes", is_flag=True, help="do not ask for confirmation")
    def erase(email: str, yes: bool) -> None:
        """Delete EMAIL's subscriber, consents, enrollments, emails and events; keep only a hash, suppressed."""
        from ..db import utcnow
        from ..privacy import erase_subscriber

        if not yes:
            click.confirm(f"Erase {email} for good?", abort=True)
        rt = _runtime(_settings())
        with rt.sessions() as session, session.begin():
            digest = erase_subscriber(session, _find(session, email), utcnow(), by="drip subscribers erase")
        click.echo(f"erased; the address is suppressed as sha256 {digest}")
