"""Migrations produce exactly the schema the code declares, and can be rolled back."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from trainyard.store import migrate
from trainyard.store.schema import declared_by_metadata, metadata
from trainyard.store.sql import SqlStore


def _diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        # Log search's full-text index is per database (an FTS5 virtual table and its triggers on
        # SQLite, a generated tsvector column with a GIN index on PostgreSQL), so ``metadata``
        # cannot declare it: the comparison skips exactly those objects by name.
        ctx = MigrationContext.configure(conn, opts={"include_name": declared_by_metadata})
        return list(compare_metadata(ctx, metadata))


def test_head_matches_metadata(store: SqlStore) -> None:
    store.migrate()  # idempotent on an up-to-date database
    assert _diff(store.engine) == []


def test_downgrade_to_base_and_back(store: SqlStore) -> None:
    migrate.downgrade(store.engine, "base")
    assert set(sa.inspect(store.engine).get_table_names()) <= {"alembic_version"}
    store.migrate()
    assert _diff(store.engine) == []
