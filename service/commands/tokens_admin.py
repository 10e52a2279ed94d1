"""`drip tokens list` and `drip tokens revoke NAME|ID`, added to the `tokens` group of cli.py."""
from __future__ import annotations

import click

from service.commands.context import load_runtime, load_settings


def register(main: click.Group) -> None:

    group = main.commands["tokens"]
    assert isinstance(group, click.Group)

    @click.command("list")
    def tokens_list() -> None:
        """Every API token: id, name, scopes, created, last used, revoked (never the token itself)."""
        from service.operator.accounts import list_tokens

        rt = load_runtime(load_settings())
        with rt.sessions() as session:
            rows = list_tokens(session)
            click.echo(f"{'id':>4}  {'name':<24} {'scopes':<11} {'created (UTC)':<17} {'last used':<17} revoked")
            for t in rows:
                def fmt(v):
                    return v.strftime("%Y-%m-%d %H:%M") if v else "-"
                click.echo(f"{t.id:>4}  {t.name[:24]:<24} {t.scopes:<11} {fmt(t.created_at):<17} "
                           f"{fmt(t.last_used_at):<17} {fmt(t.revoked_at)}")

    @click.command("revoke")
    @click.argument("ref", metavar="NAME|ID")
    def tokens_revoke(ref: str) -> None:
        """Revoke the token with this id, or every live token with this name; effective at once."""
        from service.core.db import utcnow
        from service.operator.accounts import revoke_token

        rt = load_runtime(load_settings())
        with rt.sessions() as session, session.begin():
            revoked = revoke_token(session, ref, now=utcnow())
        if not revoked:
            raise click.ClickException(f"no live token named or numbered {ref!r} (see `drip tokens list`)")
        for t in revoked:
            click.echo(f"revoked token {t.id} ({t.name})")

    group.add_command(tokens_list)
    group.add_command(tokens_revoke)
