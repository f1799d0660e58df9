"""The scheduler's rest between cycles (the dispatch stall of issue 14).

A cycle used to rest four times its wall time. On a busy machine a cycle of 4 ms of CPU took 30 to
200 ms of wall time (waiting for a core, the GIL, the write lock), and the submission that came next
on an idle fleet waited 0.1 to 0.8 s for the rest to end. The rest now follows the cycle's CPU."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.server.run import (
    SCHEDULER_MIN_GAP_S,
    SCHEDULER_REST_FACTOR,
    LeaderLoops,
    bootstrap,
    cycle_gap,
)
from trainyard.server.settings import Settings

ALICE = User("alice", "vision", "user")


@given(st.floats(0, 10, allow_nan=False), st.booleans())
def test_rest_is_a_bounded_share_of_the_cycles_cpu(cpu: float, placed: bool) -> None:
    gap = cycle_gap(cpu, placed)
    # The scheduler thread is busy a fifth of the time at most...
    assert gap >= SCHEDULER_REST_FACTOR * cpu
    # ...and rests no longer than that, or the burst floor after a cycle that placed jobs.
    assert gap <= max(SCHEDULER_REST_FACTOR * cpu, SCHEDULER_MIN_GAP_S if placed else 0.0)


@given(st.floats(0, 1, allow_nan=False))
def test_only_a_placing_cycle_waits_for_a_burst(cpu: float) -> None:
    assert cycle_gap(cpu, placed=True) >= SCHEDULER_MIN_GAP_S
    assert cycle_gap(cpu, placed=False) == SCHEDULER_REST_FACTOR * cpu
    assert cycle_gap(0.0, placed=False) == 0.0  # an idle timer cycle delays the next kick not at all


@pytest.mark.anyio
async def test_a_cycle_that_waited_for_the_write_lock_rests_by_its_cpu(tmp_path: Path) -> None:
    """The real leader loop on SQLite: a cycle kept waiting 1 s by another writer (no CPU spent)
    rests a small fraction of that, not the 4 s the wall-time rule gave."""
    platform = await asyncio.to_thread(bootstrap, Settings(home=tmp_path / "home"))
    try:
        loops = LeaderLoops(platform, None)
        await loops.lead_step()
        assert loops.leading.is_set()
        # A pool nobody serves: each cycle writes the new job's pending reason (one write transaction).
        spec = JobSpec(command=["true"], pool="nowhere")
        await platform.jobs.submit(ALICE, spec, None)
        await loops.schedule_step()  # warm: first-use costs are not what this test is about
        second = (await platform.jobs.submit(ALICE, spec, None)).job.id
        lock = platform.store.db.write_lock
        assert lock is not None
        lock.acquire()
        asyncio.get_running_loop().call_later(1.0, lock.release)
        t0 = time.monotonic()
        await loops.schedule_step()
        waited = time.monotonic() - t0
        assert waited >= 1.0, "the cycle did not wait for the write lock: the test proves nothing"
        assert loops.last_gap < 0.5, f"rested {loops.last_gap:.2f}s after a cycle that waited {waited:.2f}s"
        job = await platform.jobs.current(second)
        assert job is not None and job.pending_reason  # the write the cycle waited for
    finally:
        platform.close()
