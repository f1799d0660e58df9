"""The pending-demand board: the leader posts it every cycle and publishes it for the followers, which
answer and export the same figures; a pool whose demand went away stays at 0 for a while; and no
replica exports a board that nobody updates."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from tests.unit.server.plane import ALICE, Plane
from trainyard.server.metrics import Metrics
from trainyard.server.services.demand import KEEP_ZERO_S, REPUBLISH_EVERY_S, STALE_S, PoolDemands
from trainyard.server.services.replica import Replica

pytestmark = pytest.mark.anyio
GI = 1 << 30


def follower(plane: Plane) -> PoolDemands:
    """Another replica's board over the same store (its replica does not lead)."""
    replica = Replica(plane.cache, heartbeat_interval=1.0, restart_grace=10.0, clock=plane.clock)
    return PoolDemands(plane.store, replica, plane.clock)


def exposition(demand: PoolDemands) -> list[str]:
    """The ``trainyard_pool_pending_demand`` samples a replica with this board exports."""
    metrics = Metrics()
    metrics.add_demand_collector(demand.gauges)
    text = generate_latest(metrics.registry).decode()
    return sorted(line for line in text.splitlines() if line.startswith("trainyard_pool_pending_demand{"))


def row(pool: str, gpu_type: str, jobs: int, cpu: float, memory: int, gpu: int) -> dict[str, Any]:
    largest = {"cpu": cpu, "memory": memory, "gpu": gpu, "replicas": 1} if jobs else None
    return {
        "pool": pool,
        "gpu_type": gpu_type,
        "pending_jobs": jobs,
        "demand": {"gpu": gpu, "cpu": cpu, "memory": memory},
        "largest_job": largest,
    }


async def test_what_fits_no_worker_is_on_every_replica_until_it_goes(plane: Plane) -> None:
    await plane.worker("w1", cpu=4)
    small = await plane.submit(resources={"cpu": 2, "memory": "1Gi"})
    big = await plane.submit(resources={"cpu": 16, "memory": "2Gi"})
    gpus = await plane.submit(
        resources={"cpu": 1, "memory": "1Gi", "gpu": 2, "gpu_type": "a100"}, pool="burst"
    )
    (lease,) = plane.schedule()
    assert lease.job_id == small.id
    leader, other = plane.scheduler.demand, follower(plane)

    view = await leader.view()
    assert view == {
        "computed_at": plane.clock(),
        "pools": [row("burst", "a100", 1, 1.0, GI, 2), row("default", "none", 1, 16.0, 2 * GI, 0)],
    }
    assert await other.view() == view  # published at once: it changed
    lines = exposition(other)
    assert lines == exposition(leader)
    assert len(lines) == 6  # two pools, three resources each
    assert 'trainyard_pool_pending_demand{gpu_type="a100",pool="burst",resource="gpu"} 2.0' in lines
    assert 'trainyard_pool_pending_demand{gpu_type="none",pool="default",resource="cpu"} 16.0' in lines

    for job in (big, gpus):
        await plane.jobs.cancel(ALICE, job.id)
    plane.clock.advance(2)
    plane.schedule()
    zeros = [row("burst", "a100", 0, 0.0, 0, 0), row("default", "none", 0, 0.0, 0, 0)]
    assert (await leader.view())["pools"] == zeros
    assert (await other.view())["pools"] == zeros  # its copy was two seconds old
    assert all(line.endswith(" 0.0") for line in exposition(other))

    plane.clock.advance(KEEP_ZERO_S)
    plane.schedule()
    plane.clock.advance(REPUBLISH_EVERY_S)
    plane.schedule()
    assert (await leader.view())["pools"] == (await other.view())["pools"] == []


async def test_an_unchanged_board_is_republished_and_a_stale_one_not_exported(plane: Plane) -> None:
    await plane.worker("w1", cpu=1)
    await plane.submit(resources={"cpu": 8, "memory": "1Gi"})
    plane.schedule()
    leader, other = plane.scheduler.demand, follower(plane)
    first = (await other.view())["computed_at"]

    plane.clock.advance(REPUBLISH_EVERY_S / 2)
    plane.schedule()  # unchanged: the follower keeps the copy it has
    assert (await other.view())["computed_at"] == first
    plane.clock.advance(REPUBLISH_EVERY_S / 2)
    plane.schedule()
    assert (await other.view())["computed_at"] == plane.clock()

    # No cycle for longer than STALE_S (no leader): nobody exports it, but the view shows its age.
    plane.clock.advance(STALE_S + 1)
    assert exposition(leader) == exposition(other) == []
    assert (await other.view())["pools"][0]["pending_jobs"] == 1


async def test_nothing_computed_yet(plane: Plane) -> None:
    assert await follower(plane).view() == {"computed_at": None, "pools": []}
    assert exposition(plane.scheduler.demand) == []
