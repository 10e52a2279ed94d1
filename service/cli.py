"""The `drip` command line (also `python -m service`)."""
from __future__ import annotations

import getpass
import logging
import sys
from datetime import UTC, datetime

import click

from service.commands.context import load_runtime, load_settings, operator_error
from service.core.config import Settings
from service.core.config import mask_url as masked

log = logging.getLogger("drip")

__all__ = ["main", "masked"]


class DripGroup(click.Group):
    """Every command's operator mistakes (a setting, a campaign folder, the database) end in one line
    naming the variable or file, what is wrong and the fix; a fault in Drip itself keeps its traceback.

    The commands of `service/commands/` are registered the first time a name is not found here, names a
    group (a module there may add to it), or the list is asked for: `drip tick`, defined in this file and
    run every minute by cron on some hosts, then starts without importing every other command's module
    (~60 ms of its start-up)."""

    _extensions_loaded = False

    def load_extensions(self) -> None:
        if not self._extensions_loaded:
            from service.commands import register_all

            register_all(self)  # a module that fails to import is tried again at the next lookup
            self._extensions_loaded = True

    def get_command(self, ctx: click.Context, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if command is None or isinstance(command, click.Group):  # a group here may gain subcommands there
            self.load_extensions()
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context):
        self.load_extensions()
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            if (line := operator_error(exc, _database_url_or_none())) is None:
                raise
            raise click.ClickException(line) from None


def _database_url_or_none() -> str | None:
    from service.core.config import ConfigError, database_url_from_env

    try:
        return database_url_from_env()
    except ConfigError:
        return None


@click.group(cls=DripGroup)
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """Drip: signup webhook, welcome email, weekly coaching emails."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin at every start


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply Alembic migrations (idempotent)."""
    from service.core.config import database_url_from_env
    from service.core.migrate import upgrade

    url = database_url_from_env()
    try:  # everything else goes through DripGroup; here the URL is known, so the line can show it
        upgrade(url)
    except Exception as exc:
        if (line := operator_error(exc, url)) is None:
            raise
        raise click.ClickException(line) from None
    click.echo(f"database at head: {masked(url)}")


def _warn_placeholders(settings: Settings) -> None:
    if settings.postal_address_is_placeholder:
        log.warning("DRIP_POSTAL_ADDRESS is not set: email footers show no postal address (CAN-SPAM requires "
                    "the sender's real one; with an https DRIP_BASE_URL Drip refuses to start without it)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Web app and scheduler in one process (the embedded default)."""
    from service.server import run_gunicorn

    settings = load_settings()
    load_runtime(settings, check_templates=True)  # fail fast on a bad campaign or database, before forking
    _warn_placeholders(settings)
    base = f"http://{host}:{port}"
    click.echo(f"\nDrip is running.\n  signup form:   {base}/\n  operator:      {base}/admin "
               f"(create an account: .venv/bin/drip users add you@example.org)\n  emails go to:  "
               f"{masked(settings.email_url)}\n  database:      {masked(settings.database_url)}\n", err=True)
    run_gunicorn(settings, host=host, port=port, workers=1, threads=8, with_scheduler=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="threads per worker  [default: 4 on PostgreSQL, 1 on SQLite]")
def web(host: str, port: int, workers: int, threads: int | None) -> None:
    """The web app alone under gunicorn; never starts a scheduler."""
    from service.server import default_threads, run_gunicorn

    settings = load_settings()
    load_runtime(settings, check_templates=True)
    run_gunicorn(settings, host=host, port=port, workers=workers,
                 threads=threads or default_threads(settings.database_url), with_scheduler=False)


@main.command()
def worker() -> None:
    """Dispatch passes every DRIP_TICK_SECONDS until stopped; run as many as you like."""
    from service.scheduler import run_blocking

    settings = load_settings()
    rt = load_runtime(settings, check_templates=True)
    _warn_placeholders(settings)
    log.info("worker started: a pass every %ss, sending via %s", settings.tick_seconds, masked(settings.email_url))
    run_blocking(rt.dispatcher(), settings.tick_seconds)


@main.command()
@click.option("--now", "now_text", default=None, help="ISO-8601 time to act as if it were (default: now)")
def tick(now_text: str | None) -> None:
    """One pass: everything due as of NOW is sent, then exit with a summary line."""
    now = None
    if now_text:
        try:
            now = datetime.fromisoformat(now_text.replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(f"not an ISO-8601 time: {now_text!r}", param_hint="--now") from None
        now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    rt = load_runtime(load_settings(), check_templates=True)
    summary = rt.dispatcher().run_pass(now)
    click.echo(f"tick: {summary.line()}")


@main.group()
def users() -> None:
    """Operator accounts."""


@users.command("add")
@click.argument("email")
@click.option("--reset-password", is_flag=True,
              help="the address has an account already: give it this new password (and enable it again)")
def users_add(email: str, reset_password: bool) -> None:
    """Create an operator. An existing one is refused unless --reset-password. Password from stdin when it
    is not a terminal."""
    from service.core.db import utcnow
    from service.operator.accounts import AccountError, add_user

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise click.ClickException("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    rt = load_runtime(load_settings())
    with rt.sessions() as session, session.begin():
        try:
            user = add_user(session, email, password, now=utcnow(), reset_password=reset_password)
        except AccountError as exc:
            hint = " (drip users add --reset-password EMAIL)" if "already has an account" in str(exc) else ""
            raise click.ClickException(f"{exc}{hint}") from None
        click.echo(f"operator {user.email} can log in at {rt.settings.base_url}/admin/login")


@main.group()
def tokens() -> None:
    """API tokens."""


@tokens.command("create")
@click.argument("name")
@click.option("--write", is_flag=True, help="may also add, unsubscribe and erase subscribers (default: read only)")
def tokens_create(name: str, write: bool) -> None:
    """Print a new API token (shown once; only its hash is kept). Read-only unless --write."""
    from service.core.db import utcnow
    from service.operator.accounts import AccountError, create_token

    rt = load_runtime(load_settings())
    with rt.sessions() as session, session.begin():
        try:
            token = create_token(session, name, now=utcnow(), scopes=("read", "write") if write else ("read",))
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(token)


if __name__ == "__main__":
    main()
