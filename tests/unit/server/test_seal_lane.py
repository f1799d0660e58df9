"""Sealed log chunks go through a group commit of their own: a burst of seals (every attempt of a
burst of submissions seals at about the same time) must not hold up the reports queued behind it.
At 2,000 running jobs on PostgreSQL a shared lane put STARTED reports seconds late."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from trainyard.model.records import LogChunk
from trainyard.server.group_commit import GroupCommit
from trainyard.server.hub import Kick
from trainyard.server.services.attempts import AttemptService
from trainyard.store import ReportResult

pytestmark = pytest.mark.timeout(30)


class _Store:
    """Applies each batch in a thread as the real store does; a seal blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seals = 0

    def apply_batch(self, ops: Sequence[Callable[[Any], Any]]) -> list[tuple[bool, Any]]:
        return [(True, op(None)) for op in ops]

    def add_log_chunk_in(self, conn: Any, chunk: LogChunk, token: str) -> bool:
        self.seals += 1
        assert self.release.wait(20)
        return True

    def report_started_in(
        self, conn: Any, job_id: str, attempt: int, token: str, worker_id: str
    ) -> ReportResult:
        return ReportResult(ok=True)


def _service(store: _Store, *, own_lane: bool) -> AttemptService:
    writes = GroupCommit(store)  # type: ignore[arg-type]
    return AttemptService(
        store,  # type: ignore[arg-type]
        writes,
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        kick_scheduler=Kick(),
        kick_relay=Kick(),
        seal_writes=GroupCommit(store) if own_lane else None,  # type: ignore[arg-type]
    )


def _started_while_a_seal_is_stuck(own_lane: bool) -> bool:
    store = _Store()
    service = _service(store, own_lane=own_lane)

    async def main() -> bool:
        chunk = LogChunk("j", 1, 0, 0, 10, "k", 10)
        seal = asyncio.create_task(service.seal_log_chunk(chunk, "t"))
        while store.seals == 0:
            await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(service.started("j2", 1, "t", "w"), 2)
            answered = True
        except TimeoutError:
            answered = False
        store.release.set()
        assert await seal
        return answered

    return asyncio.run(main())


def test_a_report_is_answered_while_a_seal_batch_is_still_applying() -> None:
    assert _started_while_a_seal_is_stuck(own_lane=True)


def test_one_shared_lane_would_queue_the_report_behind_the_seal() -> None:
    # The control: without the lane of its own the same report waits (what the lane is for).
    assert not _started_while_a_seal_is_stuck(own_lane=False)


def test_the_platform_gives_seals_their_own_lane(tmp_path: Any) -> None:
    from trainyard.server.platform import Platform
    from trainyard.server.settings import Settings

    platform = Platform(Settings(home=tmp_path))
    try:
        assert platform.attempts.seal_writes is platform.seal_writes
        assert platform.seal_writes is not platform.writes
    finally:
        platform.close()
