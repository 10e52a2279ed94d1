"""The schema belongs to Alembic: an empty database upgrades to head and matches the models exactly."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from service.migrate import upgrade
from service.models import Base


def test_upgrade_is_idempotent_and_models_match(database_url: str) -> None:
    """Upgrading twice is harmless, and autogenerate finds nothing left to migrate."""
    upgrade(database_url)
    upgrade(database_url)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
