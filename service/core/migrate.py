"""Runs Alembic from code: `drip db upgrade`, the tests' schema set-up, and the check that a database is
at the revision this Drip needs."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from service.core.config import PROJECT_ROOT, ConfigError, mask_url

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic (and the template engine and highlighter it brings) is imported only when needed: every `drip`
# command checks the schema at start, and importing it costs a `drip tick` with nothing due a tenth of its time.
# The quick check reads the revision ids from the migration files' own lines and the database's
# alembic_version table; anything it does not recognise goes to Alembic's own check.
_REVISION = re.compile(r"""^revision\s*=\s*["']([^"']+)["']\s*$""", re.M)
_DOWN = re.compile(r"^down_revision\s*=\s*(.+)$", re.M)
_QUOTED = re.compile(r"""["']([^"']+)["']""")


def _migrations() -> Path:
    """The migrations folder beside the code. Drip runs from its source folder (`make install`, which installs
    it editable): a copy installed into site-packages by `pip install .` has the code without the
    migrations, and Alembic would only say it cannot find a folder."""
    folder = PROJECT_ROOT / "migrations"
    if not (folder / "env.py").is_file():
        raise ConfigError(f"this Drip has no migrations beside its code ({folder} is missing): it runs from its "
                          "source folder; install it there with `make install` (or `pip install -e .`), "
                          "not `pip install .`")
    return folder


def _file_heads() -> set[str] | None:
    """The head revisions as the migration files name them, or None when a file does not read plainly."""
    revisions, downs = set(), set()
    for path in (_migrations() / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        rev, down = _REVISION.findall(source), _DOWN.findall(source)
        if len(rev) != 1 or len(down) != 1:
            return None
        revisions.add(rev[0])
        downs.update(_QUOTED.findall(down[0]))
    return (revisions - downs) or None


def _at_heads_quickly(connection: Connection) -> bool:
    """True when the database's alembic_version rows are exactly the files' heads (False: ask Alembic)."""
    heads = _file_heads()
    if heads is None:
        return False
    if not inspect(connection).has_table("alembic_version"):
        return False  # a database never upgraded: Alembic's check says so in its words
    return set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars()) == heads


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(_migrations()))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def schema_problem(connection: Connection, database_url: str) -> str | None:
    """Why this database cannot serve this version of Drip, in one line with the fix; None when it is at head.

    Every command but `drip db upgrade` asks first: a database never upgraded (or upgraded by an older Drip)
    would otherwise let `drip serve` say it is running and then answer every signup with a 500.
    """
    if _at_heads_quickly(connection):
        return None
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

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
