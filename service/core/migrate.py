"""Runs Alembic from code: `drip db upgrade`, the tests' schema set-up, and the check that a database is
at the revision this Drip needs."""
from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from service.core.config import PROJECT_ROOT, mask_url


def alembic_config(database_url: str) -> Config:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def schema_problem(connection: Connection, database_url: str) -> str | None:
    """Why this database cannot serve this version of Drip, in one line with the fix; None when it is at head.

    Every command but `drip db upgrade` asks first: a database never upgraded (or upgraded by an older Drip)
    would otherwise let `drip serve` say it is running and then answer every signup with a 500.
    """
    script = ScriptDirectory.from_config(alembic_config(database_url))
    heads = set(script.get_heads())
    quiet = logging.getLogger("alembic.runtime.migration")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its INFO lines belong to `drip db upgrade`, not to every command's start
    try:
        current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        quiet.setLevel(level)
    if current == heads:
        return None
    where = f"DATABASE_URL: the database at {mask_url(database_url)}"
    if not current:
        return f"{where} has no Drip tables yet; run `drip db upgrade` first"
    known = {rev.revision for rev in script.walk_revisions()}
    if current - known:
        return (f"{where} is at revision {', '.join(sorted(current - known))}, which this Drip does not know "
                "(a newer Drip migrated it); upgrade this Drip to that version, or point DATABASE_URL at this "
                "Drip's own database")
    return (f"{where} is at revision {', '.join(sorted(current))}, older than this Drip needs "
            f"({', '.join(sorted(heads))}); run `drip db upgrade`")
