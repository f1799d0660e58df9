"""With a backlog, the leader's log-search indexer keeps to its share of a core
(``TRAINYARD_LOG_INDEX_CPU``): it rests after each batch in proportion to the CPU the batch took,
and stops at once when the queue is short or leadership is lost."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from trainyard.server.run import LOG_INDEX_BATCH, LeaderLoops
from trainyard.server.settings import Settings

pytestmark = pytest.mark.timeout(30)


class _Indexer:
    def __init__(self, full_batches: int, burn_s: float) -> None:
        self.left = full_batches
        self.burn_s = burn_s
        self.calls = 0
        self.cpu = 0.0

    def index_once(self) -> int:
        self.calls += 1
        c0 = time.thread_time()
        while time.thread_time() - c0 < self.burn_s:
            pass
        self.cpu += time.thread_time() - c0
        if self.left > 0:
            self.left -= 1
            return LOG_INDEX_BATCH
        return 3


def _loops(indexer: _Indexer, share: float) -> LeaderLoops:
    settings = Settings.model_construct(log_index_cpu=share)
    loops = LeaderLoops(SimpleNamespace(settings=settings, log_indexer=indexer), None)  # type: ignore[arg-type]
    loops.leading.set()
    return loops


def test_a_backlog_is_indexed_at_the_configured_share_of_a_core() -> None:
    indexer = _Indexer(full_batches=5, burn_s=0.02)
    loops = _loops(indexer, 0.25)
    t0 = time.monotonic()
    asyncio.run(loops.log_index_step())
    wall = time.monotonic() - t0
    assert indexer.calls == 6  # five full batches, then a short one ends the step
    # Each full batch is followed by a rest of three times its CPU: at 25 %, the step's wall time is
    # at least four times the CPU of the full batches (a loaded machine only adds to it).
    full_cpu = indexer.cpu * 5 / 6
    assert wall >= 4 * full_cpu * 0.9, (wall, indexer.cpu)


def test_a_whole_core_rests_not_at_all() -> None:
    indexer = _Indexer(full_batches=3, burn_s=0.0)
    loops = _loops(indexer, 1.0)
    asyncio.run(loops.log_index_step())
    assert indexer.calls == 4


def test_a_lost_lead_stops_the_backlog_after_the_batch_in_hand() -> None:
    indexer = _Indexer(full_batches=100, burn_s=0.0)
    loops = _loops(indexer, 0.5)
    real = indexer.index_once

    def once_then_lose() -> int:
        loops.leading.clear()
        return real()

    indexer.index_once = once_then_lose  # type: ignore[method-assign]
    asyncio.run(loops.log_index_step())
    assert indexer.calls == 1


def test_the_share_is_checked() -> None:
    with pytest.raises(ValueError, match="log_index_cpu"):
        Settings(log_index_cpu=0)
    with pytest.raises(ValueError, match="log_index_cpu"):
        Settings(log_index_cpu=1.5)
    assert Settings().log_index_cpu == 0.25
