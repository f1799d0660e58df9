"""Schema migrations (Alembic), applied explicitly at start-up or by ``yard admin migrate``."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration for this package's migrations, run on ``connection`` if given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_DIR))
    cfg.attributes["connection"] = connection
    return cfg


# Replicas starting together must not run the same migration twice: on PostgreSQL the first takes
# this transaction-scoped advisory lock and the others wait, then find nothing left to do.
_MIGRATION_LOCK = 0x7479_6D69_6772_6174


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` in one transaction (PostgreSQL: one replica at a time)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: sa.Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` in one transaction."""
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)
