"""The control plane's services below the full harness: SQLite in a temp dir and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.server.plane import FakeClock, Plane, build


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def plane(tmp_path: Path, clock: FakeClock) -> Iterator[Plane]:
    p = build(tmp_path, clock)
    yield p
    p.close()
