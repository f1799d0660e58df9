"""The workers table's copy of the heartbeats (for readers without the cache) is refreshed every
few seconds with only the beats that moved since it was last written, in one statement."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.server.plane import Plane
from trainyard.server.services.reconcile import HEARTBEAT_PERSIST_S

pytestmark = pytest.mark.anyio


async def test_only_the_beats_that_moved_are_written(plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = await plane.worker("a"), await plane.worker("b")
    written: list[dict[str, float]] = []
    touch = plane.store.touch_workers

    def recording(seen: dict[str, float]) -> Any:
        written.append(dict(seen))
        return touch(seen)

    monkeypatch.setattr(plane.store, "touch_workers", recording)
    plane.clock.advance(HEARTBEAT_PERSIST_S)
    await plane.beat(a)
    await plane.beat(b)
    plane.reconciler.reconcile_once()
    assert set(written[-1]) == {a.id, b.id}

    plane.clock.advance(HEARTBEAT_PERSIST_S)
    await plane.beat(a)  # b is quiet between two writes (it beats less often than they come)
    plane.reconciler.reconcile_once()
    assert set(written[-1]) == {a.id}
    assert plane.store.heartbeat_at(a.id) == pytest.approx(written[-1][a.id])
    assert plane.store.heartbeat_at(b.id) == pytest.approx(written[-2][b.id])
    assert written[-1][a.id] > written[-2][a.id]


async def test_a_failed_write_leaves_its_beats_due(plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    a = await plane.worker("a")
    touch = plane.store.touch_workers
    calls: list[dict[str, float]] = []

    def failing(seen: dict[str, float]) -> Any:
        calls.append(dict(seen))
        raise OSError("database away")

    monkeypatch.setattr(plane.store, "touch_workers", failing)
    plane.clock.advance(HEARTBEAT_PERSIST_S)
    await plane.beat(a)
    with pytest.raises(OSError):
        plane.reconciler.reconcile_once()
    monkeypatch.setattr(plane.store, "touch_workers", touch)
    plane.clock.advance(1)
    plane.reconciler.reconcile_once()
    assert plane.store.heartbeat_at(a.id) == pytest.approx(calls[-1][a.id])
