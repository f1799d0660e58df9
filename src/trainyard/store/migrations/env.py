"""Alembic environment. Run through ``trainyard.store.migrate``; never on import."""

from __future__ import annotations

from alembic import context

from trainyard.store.schema import declared_by_metadata, metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through trainyard.store.migrate.upgrade(engine)")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    include_name=declared_by_metadata,  # log search's per-database full-text index
)
with context.begin_transaction():
    context.run_migrations()
