"""Migrations produce exactly the schema the code declares, and can be rolled back."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from trainyard.store import migrate
from trainyard.store.schema import metadata
from trainyard.store.sql import SqlStore


def _diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))


def test_head_matches_metadata(store: SqlStore) -> None:
    store.migrate()  # idempotent on an up-to-date database
    assert _diff(store.engine) == []


def test_downgrade_to_base_and_back(store: SqlStore) -> None:
    migrate.downgrade(store.engine, "base")
    assert set(sa.inspect(store.engine).get_table_names()) <= {"alembic_version"}
    store.migrate()
    assert _diff(store.engine) == []
