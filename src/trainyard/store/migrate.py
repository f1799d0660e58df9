"""Schema migrations (Alembic), applied explicitly at start-up or by ``yard admin migrate``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config

_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration for this package's migrations, run on ``connection`` if given."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_DIR))
    cfg.attributes["connection"] = connection
    return cfg


# Replicas starting together must not run the same migration twice: on PostgreSQL the first takes
# this transaction-scoped advisory lock and the others wait, then find nothing left to do.
_MIGRATION_LOCK = 0x7479_6D69_6772_6174


_REVISION_LINE = re.compile(r'^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(?:"([^"]*)"|None)\s*$', re.M)


def head_revisions() -> frozenset[str]:
    """The newest revisions, read from the version files' text: what Alembic would call the heads.

    A revision file this cannot read (a merge's tuple of down revisions) leaves an extra "head",
    which only means the start-up check below hands over to Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (_DIR / "versions").glob("*.py"):
        for kind, rev in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            if rev:
                (revisions if kind == "revision" else parents).add(rev)
    return frozenset(revisions - parents)


def current_revisions(conn: sa.Connection) -> frozenset[str]:
    """The revisions the database is stamped with (none for an empty database)."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return frozenset()
    rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
    return frozenset(str(r) for r in rows)


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` in one transaction (PostgreSQL: one replica at a time)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        # Alembic (with Mako) is 10 MB of a process that keeps running: a control plane restarting
        # on an up-to-date schema, the usual start, never imports it.
        if revision == "head" and current_revisions(conn) == head_revisions():
            return
        from alembic import command

        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: sa.Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` in one transaction."""
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)
