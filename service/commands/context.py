"""What every `drip` command starts from: the settings from the environment and the runtime built from
them, each failing with one line that names the problem and its fix instead of a traceback.

`operator_error` is the one place that turns an operator's mistake (a setting, a campaign folder, a
database that is unreachable or not upgraded) into that line; `service.cli` applies it to every command.
"""
from __future__ import annotations

from pathlib import Path

import click

from service.core.config import ConfigError, Settings, mask_url


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def load_runtime(settings: Settings, *, check_schema: bool = True, check_templates: bool = False, **kw):
    """The runtime, after checking that its database is reachable and at the revision this Drip needs, and
    (for the commands that send: serve, web, worker, tick) after checking the postal address, publishing the
    campaign folders and checking that every step's template compiles."""
    from service.runtime import build_runtime, check_postal_address

    if check_templates:
        try:  # a production URL (https) without a postal address: refuse before anything is sent
            check_postal_address(settings)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        rt = build_runtime(settings, **kw)
    except Exception as exc:
        if (line := operator_error(exc, settings.database_url)) is None:
            raise
        raise click.ClickException(line) from None
    if check_schema:
        require_current_schema(rt)
    if check_templates:
        sync_campaign_folders(rt)  # publish the folders first, so the check reads the versions it will send
        require_compiling_templates(rt)
    return rt


def require_compiling_templates(rt) -> None:
    """A step whose template does not compile would start fine and then fail every send of that step: refuse
    at start instead, naming the file and line. The compiled templates stay in the composer's cache.

    Only the campaigns whose files changed since they last compiled at a start are compiled
    (campaigns/template_marks.py): a start with the same files (a `drip tick` from cron) needs neither the
    composer nor Jinja. A template that fails is never recorded as compiled, so every start refuses it
    until it is fixed; a database that cannot say (not migrated) has every campaign compiled."""
    from sqlalchemy.exc import DBAPIError

    from service.campaigns import template_marks
    from service.core.db import utcnow

    digests = template_marks.template_digests(rt.campaigns)
    try:
        with rt.sessions() as session:
            todo = template_marks.unchecked(session, digests)
    except DBAPIError:
        todo = set(digests)
    if not todo:
        return
    from jinja2 import TemplateSyntaxError

    for key in sorted(todo):
        campaign = rt.campaigns[key]
        for step in campaign.steps:
            for ext in ("txt", "html"):
                name = f"{campaign.key}/{step.template}.{ext}"
                try:
                    rt.composer.env.get_template(name)
                except TemplateSyntaxError as exc:
                    where = Path(exc.filename or Path(rt.settings.templates_dir) / name)
                    raise click.ClickException(
                        f"invalid campaign: {where}:{exc.lineno}: {exc.message}; fix it (`drip campaigns check` "
                        "lists every problem)") from None
    try:
        with rt.sessions() as session, session.begin():
            template_marks.record(session, {key: digests[key] for key in todo}, now=utcnow())
    except DBAPIError:  # not recorded: the next start compiles them again
        pass


def require_current_schema(rt) -> None:
    """Refuse to go on when the database is behind (or ahead of) this Drip's migrations: one line, the fix."""
    from service.core.migrate import schema_problem

    try:
        with rt.sessions() as session:
            problem = schema_problem(session.connection(), rt.settings.database_url)
    except Exception as exc:
        if (line := operator_error(exc, rt.settings.database_url)) is None:
            raise
        raise click.ClickException(line) from None
    if problem:
        raise click.ClickException(problem)


def operator_error(exc: BaseException, database_url: str | None = None) -> str | None:
    """The one line for an operator's mistake, or None for a fault in Drip itself (which keeps its traceback)."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from service.campaigns.model import CampaignError

    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, CampaignError):
        line = _first_line(str(exc))
        return line if line.startswith("DRIP_") else f"invalid campaign: {line}"  # a setting names itself
    if isinstance(exc, OSError) and exc.filename:
        url = database_url or ""
        sqlite_path = url.removeprefix("sqlite:///") if url.startswith("sqlite") else ""
        variable = "DATABASE_URL: " if sqlite_path and sqlite_path.startswith(str(exc.filename)) else ""
        what = ("is a file where a folder is needed" if isinstance(exc, FileExistsError | NotADirectoryError)
                else exc.strerror)
        return f"{variable}cannot use {exc.filename}: {what}; check the path and its permissions"
    if isinstance(exc, OperationalError | ProgrammingError):
        where = f" at {mask_url(database_url)}" if database_url else ""
        reason = _first_line(str(exc.orig) if exc.orig is not None else str(exc))
        if isinstance(exc, ProgrammingError) or "no such table" in reason:
            # A table or column missing: a schema from before a migration (the revision check came earlier
            # or the database was changed by hand).
            return (f"DATABASE_URL: the database{where} lacks Drip's tables or columns ({reason}); "
                    "run `drip db upgrade`")
        if getattr(exc.orig, "sqlstate", None) in ("40001", "40P01"):
            # PostgreSQL rolled back one transaction that collided with another's (a serialization failure,
            # a deadlock): the server was reached, and running the command again is the fix.
            return (f"DATABASE_URL: the database{where} rolled back a transaction that collided with another "
                    f"one ({mask_url(reason)}); nothing of it was written: run the command again")
        return (f"DATABASE_URL: cannot reach the database{where}: {mask_url(reason)}; check that the server is "
                "running and the URL's host, port, user and database name")
    return None


def _first_line(text: str) -> str:
    return " ".join(text.strip().splitlines()[:1]).strip() or text.strip()


def sync_campaign_folders(rt) -> None:
    """Campaign folders reach the database at start-up (see campaigns/versions.py, sync_folders): a fresh
    install sends what it ships, and deployed file edits are published unless the console published since."""
    import logging

    from sqlalchemy.exc import DBAPIError, IntegrityError

    from service.campaigns.versions import sync_folders
    from service.core.db import utcnow

    log = logging.getLogger("service.campaigns")
    try:
        with rt.sessions() as session, session.begin():
            notes = sync_folders(session, rt.campaigns.folders, now=utcnow())
    except IntegrityError:  # another process started at the same moment and published them
        notes = []
    except DBAPIError as exc:  # not migrated yet: the folders are sent as they are
        log.warning("campaign folders not published to the database (%s); run `drip db upgrade`",
                    exc.__class__.__name__)
        return
    for note in notes:
        log.log(logging.WARNING if "differs" in note else logging.INFO, "%s", note)
    rt.campaigns.refresh()
