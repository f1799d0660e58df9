"""Shared fixtures: a fresh database per test (PostgreSQL cloned from a migrated template)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from trainyard.store.sql import SqlStore

PG_URL = os.environ.get("TRAINYARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_admin() -> sa.Engine:
    url = sa.engine.make_url(PG_URL).set(drivername="postgresql+psycopg")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _pg_url(db: str) -> str:
    return sa.engine.make_url(PG_URL).set(database=db).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated once per session; each test clones it (fast, isolated)."""
    admin = _pg_admin()
    name = f"ty_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as e:  # never a silent skip: PostgreSQL is part of the test bed
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}: {e}")
    store = SqlStore(_pg_url(name))
    store.migrate()
    store.close()
    yield name
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    admin = _pg_admin()
    name = f"ty_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield _pg_url(name)
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def sqlite_store(path: Path) -> SqlStore:
    store = SqlStore(f"sqlite:///{path}")
    store.migrate()
    return store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """The store contract runs against every implementation."""
    if request.param == "sqlite":
        s = sqlite_store(tmp_path / "state.db")
    else:
        s = SqlStore(request.getfixturevalue("pg_url"))
    yield s
    s.close()
