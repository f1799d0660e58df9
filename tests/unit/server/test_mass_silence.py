"""Many workers silent at once are held, not declared dead, for a bounded time (the control plane is
the likelier fault); a few silent workers among a beating fleet are declared dead at once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.server.plane import HEARTBEAT_S, Plane
from trainyard.model.records import Worker
from trainyard.model.states import JobStatus
from trainyard.server.silence import MIN_WORKERS, SHARE, MassSilence

# ---- the rule, on plain numbers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("silent", "fleet", "held"),
    [
        (0, 2000, False),
        (1, 1, False),  # one machine, lost: never held
        (MIN_WORKERS - 1, MIN_WORKERS, False),  # all of a small fleet: below the minimum
        (MIN_WORKERS, 2000, False),  # 1 % of a large fleet: real failures
        (200, 2000, False),  # exactly the share
        (201, 2000, True),
        (MIN_WORKERS, MIN_WORKERS, True),
    ],
)
def test_what_is_a_mass_silence(silent: int, fleet: int, held: bool) -> None:
    assert MassSilence(hold_s=60).hold(silent, fleet, now=0.0) is held


def test_the_hold_is_bounded_and_starts_again_after_a_quiet_sweep() -> None:
    s = MassSilence(hold_s=60)
    assert s.hold(500, 2000, now=0.0)
    assert s.hold(400, 2000, now=59.9)
    assert not s.hold(400, 2000, now=60.0)  # a silence that lasts is real: declare them
    assert not s.hold(3, 2000, now=61.0)  # the fleet beats again
    assert s.hold(500, 2000, now=100.0)  # a new mass silence gets a new hold


@given(
    st.lists(
        st.tuples(st.integers(0, 3000), st.integers(1, 3000), st.floats(0, 30, allow_nan=False)), max_size=40
    )
)
def test_never_holds_a_few_and_never_longer_than_the_hold(sweeps: list[tuple[int, int, float]]) -> None:
    s, now, since = MassSilence(hold_s=60), 0.0, None
    for silent, fleet, step in sweeps:
        now += step
        held = s.hold(silent, fleet, now)
        mass = silent >= MIN_WORKERS and silent > SHARE * fleet
        since = (since if since is not None else now) if mass else None
        assert held == (mass and since is not None and now - since < 60)


# ---- the reconciler ------------------------------------------------------------------------------


async def _fleet_with_jobs(plane: Plane, n: int) -> tuple[list[Worker], list[str]]:
    """``n`` workers, each running one job."""
    workers = [await plane.worker(f"w{i}") for i in range(n)]
    job_ids = [(await plane.submit()).id for _ in range(n)]
    leases = plane.schedule()
    assert len(leases) == n
    for lease in leases:
        await plane.start(lease)
    return workers, job_ids


@pytest.mark.anyio
async def test_a_fleet_gone_silent_together_is_held_then_declared(plane: Plane) -> None:
    workers, _ = await _fleet_with_jobs(plane, MIN_WORKERS + 5)
    hold_s = plane.reconciler.silence.hold_s
    plane.clock.advance(3 * HEARTBEAT_S + 0.1)  # nobody beat: all silent at once
    assert plane.reconciler.reconcile_once() == []
    plane.clock.advance(hold_s - 1)
    assert plane.reconciler.reconcile_once() == []
    assert all(plane.store.get_worker(w.id).status == "ALIVE" for w in workers)  # type: ignore[union-attr]
    plane.clock.advance(1.1)
    assert len(plane.reconciler.reconcile_once()) == len(workers)  # the silence lasted: real
    assert all(plane.store.get_worker(w.id).status == "DEAD" for w in workers)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_held_workers_that_beat_again_keep_their_jobs(plane: Plane) -> None:
    workers, job_ids = await _fleet_with_jobs(plane, MIN_WORKERS + 5)
    plane.clock.advance(3 * HEARTBEAT_S + 0.1)
    assert plane.reconciler.reconcile_once() == []  # held
    for w in workers:  # the control plane takes their beats again
        await plane.beat(w)
    plane.clock.advance(HEARTBEAT_S)
    assert plane.reconciler.reconcile_once() == []
    assert {plane.job(j).status for j in job_ids} == {JobStatus.RUNNING}


@pytest.mark.anyio
async def test_a_few_silent_among_a_beating_fleet_are_declared_at_once(plane: Plane) -> None:
    workers, _ = await _fleet_with_jobs(plane, MIN_WORKERS + 5)
    beating, silent = workers[3:], workers[:3]
    plane.clock.advance(3 * HEARTBEAT_S - 1)
    for w in beating:
        await plane.beat(w)
    plane.clock.advance(1.1)
    touched = plane.reconciler.reconcile_once()
    assert len(touched) == len(silent)
    assert {w.id for w in silent} == {
        w.id
        for w in workers
        if plane.store.get_worker(w.id).status == "DEAD"  # type: ignore[union-attr]
    }
