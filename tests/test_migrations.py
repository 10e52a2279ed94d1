"""The schema belongs to Alembic: an empty database upgrades to head and matches the models exactly."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from service.core.migrate import upgrade
from service.core.models import Base

VERSIONS = Path(__file__).resolve().parent.parent / "migrations" / "versions"
FILE_NAME = re.compile(r"(?P<number>\d{4})_(?P<what>[a-z0-9_]+)\.py")
TRACKER_REFERENCE = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)  # the word issue, then a number


def test_upgrade_is_idempotent_and_models_match(database_url: str) -> None:
    """Upgrading twice is harmless, and autogenerate finds nothing left to migrate."""
    upgrade(database_url)
    upgrade(database_url)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def _revision_ids(path: Path) -> tuple[str, str | None]:
    """A migration file's `revision` and `down_revision`, read without importing it."""
    ids: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("revision", "down_revision"):
                ids[node.targets[0].id] = ast.literal_eval(node.value)
    revision, down_revision = ids.get("revision"), ids.get("down_revision")
    assert isinstance(revision, str), f"{path.name}: no revision id"
    assert down_revision is None or isinstance(down_revision, str), f"{path.name}: a merge revision ({down_revision})"
    return revision, down_revision


def _chain(versions: Path) -> list[str]:
    """The migration file names in apply order: from the base (down_revision None), each next file is the
    one whose down_revision is the previous file's revision. Fails on a branch, a second base or a file the
    walk never reaches."""
    files = sorted(versions.glob("*.py"))
    children: dict[str | None, list[tuple[str, str]]] = {}
    for path in files:
        revision, down_revision = _revision_ids(path)
        children.setdefault(down_revision, []).append((revision, path.name))
    order: list[str] = []
    current: str | None = None
    while current in children:
        assert len(children[current]) == 1, f"the chain branches after {current}: {children[current]}"
        current, name = children[current][0]
        assert name not in order, f"the chain loops at {name}"
        order.append(name)
    unreached = sorted({path.name for path in files} - set(order))
    assert not unreached, f"not reached from the base by down_revision: {unreached}"
    return order


def test_migration_file_names_follow_the_apply_order() -> None:
    """Sorted by name, the files are the revision chain from base to head, numbered 0001, 0002, ... with no
    gap, each named for what it does. The revision ids inside stay as shipped (databases store them), so
    the order comes from walking down_revision -> revision, not from the ids."""
    chain = _chain(VERSIONS)
    names = sorted(path.name for path in VERSIONS.glob("*.py"))
    assert names == chain, f"file order is not the apply order; apply order is {chain}"
    for number, name in enumerate(chain, start=1):
        match = FILE_NAME.fullmatch(name)
        assert match, f"{name}: expected NNNN_<what it does>.py"
        assert int(match["number"]) == number, f"{name}: expected number {number:04d} (contiguous from 0001)"
        what = match["what"]
        assert re.search(r"[a-z]{3}", what) and not re.search(r"issue_?\d", what), \
            f"{name}: the name should say what the migration does, not a number or tracker id"


def test_migrations_do_not_cite_tracker_issues() -> None:
    """Docstrings and comments say what a change is for, not which tracker issue asked for it."""
    for path in sorted(VERSIONS.glob("*.py")):
        found = TRACKER_REFERENCE.findall(path.read_text(encoding="utf-8"))
        assert not found, f"{path.name}: {found}"


def test_the_quick_schema_check_agrees_with_alembic(database_url: str) -> None:
    """Every command's start-up check reads the heads from the migration files without importing Alembic; they
    are Alembic's own heads, a database at head passes, and one a revision behind gets Alembic's answer."""
    from alembic.command import downgrade
    from alembic.script import ScriptDirectory

    from service.core import migrate

    assert migrate._file_heads() == set(ScriptDirectory.from_config(migrate.alembic_config(database_url)).get_heads())
    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert migrate._at_heads_quickly(conn) and migrate.schema_problem(conn, database_url) is None
        downgrade(migrate.alembic_config(database_url), "-1")
        with engine.connect() as conn:
            assert not migrate._at_heads_quickly(conn)
            assert "older than this Drip needs" in migrate.schema_problem(conn, database_url)
    finally:
        engine.dispose()
        upgrade(database_url)
