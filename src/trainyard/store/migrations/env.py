"""Alembic environment. Run through ``trainyard.store.migrate``; never on import."""

from __future__ import annotations

from alembic import context

from trainyard.store.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through trainyard.store.migrate.upgrade(engine)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
