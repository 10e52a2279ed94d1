"""`drip sending status` and `drip sending resume`: the pause a provider's 401/403 sets."""
from __future__ import annotations

import click

from service.commands.context import load_runtime, load_settings


def register(main: click.Group) -> None:
    @main.group()
    def sending() -> None:
        """Whether sending is paused (after a provider refused our credentials), and resuming it."""

    @sending.command("status")
    def status() -> None:
        """Print `sending: active` or `sending: paused (reason)`; exit 1 when paused."""
        from service.dispatch.sending_pause import paused_reason

        rt = load_runtime(load_settings())
        with rt.sessions() as session:
            reason = paused_reason(session)
        click.echo(f"sending: paused ({reason})" if reason else "sending: active")
        if reason:
            raise SystemExit(1)

    @sending.command("resume")
    def resume() -> None:
        """Clear the pause once DRIP_EMAIL_URL has working credentials; the next pass sends again."""
        from service.core.db import utcnow
        from service.dispatch.sending_pause import resume as do_resume

        rt = load_runtime(load_settings())
        with rt.sessions() as session, session.begin():
            was_paused = do_resume(session, now=utcnow())
        click.echo("sending resumed" if was_paused else "sending was not paused")
