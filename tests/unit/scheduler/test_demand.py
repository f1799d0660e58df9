"""The autoscaling signal: which waits count as pending demand, under which labels, summed how, and the
largest job; then the same through ``decide`` on snapshots where each wait really happens."""

from __future__ import annotations

import pytest

from tests.unit.scheduler.helpers import decide_on, gpu_node, job, node, run, snap, team
from trainyard.scheduler.core import decide
from trainyard.scheduler.decisions import ReasonCode
from trainyard.scheduler.demand import (
    DEMAND_CODES,
    PoolDemand,
    ReplicaShape,
    cycle_demand,
    demand_key,
    unmet_demand,
)
from trainyard.scheduler.snapshot import GIB, PendingJob, Quota, Team


@pytest.mark.parametrize(
    ("code", "counted"),
    [
        ("capacity", True),
        ("reservation", True),
        ("reserved", True),
        ("never-fits", True),
        ("quota", False),
        ("preempting", False),
        ("draining", False),
        ("array-limit", False),  # an array's parallelism: more workers would not start it
        (None, False),  # placed this cycle
    ],
)
def test_which_waits_count(code: ReasonCode | None, counted: bool) -> None:
    codes = {} if code is None else {"j": code}
    rows = unmet_demand([job("j", cpu=2)], codes)
    assert bool(rows) is counted
    assert (code in DEMAND_CODES) is counted


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({}, ("default", "none")),
        ({"pool": "cpu"}, ("cpu", "none")),
        ({"gpu": 2}, ("default", "any")),
        ({"gpu": 2, "gpu_type": "a100", "pool": "a100-burst"}, ("a100-burst", "a100")),
        ({"gpu_type": "a100"}, ("default", "none")),  # a type means nothing without GPUs
    ],
)
def test_labels(kw: dict[str, object], key: tuple[str, str]) -> None:
    j = job("j", **kw)  # type: ignore[arg-type]
    assert demand_key(j) == key
    (row,) = unmet_demand([j], {"j": "capacity"})
    assert row.key == key


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        # One job: its demand, and it is the largest.
        (
            [job("a", cpu=4, mem=8 * GIB, gpu=2, gpu_type="a100")],
            PoolDemand("default", "a100", 1, 4, 8 * GIB, 2, ReplicaShape(4, 8 * GIB, 2)),
        ),
        # A gang counts every replica; its shape is per replica.
        (
            [job("g", cpu=8, mem=GIB, gpu=8, gpu_type="a100", replicas=4)],
            PoolDemand("default", "a100", 1, 32, 4 * GIB, 32, ReplicaShape(8, GIB, 8, 4)),
        ),
        # Sums; the largest goes by GPUs first, then cores.
        (
            [
                job("a", cpu=64, mem=GIB, gpu=1, gpu_type="a100"),
                job("b", cpu=2, mem=GIB, gpu=4, gpu_type="a100"),
                job("c", cpu=8, mem=GIB, gpu=4, gpu_type="a100"),
            ],
            PoolDemand("default", "a100", 3, 74, 3 * GIB, 9, ReplicaShape(8, GIB, 4)),
        ),
    ],
)
def test_sums_and_largest(jobs: list[PendingJob], expected: PoolDemand) -> None:
    assert unmet_demand(jobs, dict.fromkeys((j.id for j in jobs), "capacity")) == [expected]


def test_rows_per_pool_and_type_sorted_and_resources_named_for_the_metric() -> None:
    jobs = [
        job("x", pool="gpu", gpu=1, gpu_type="h100"),
        job("y", pool="gpu", gpu=1, gpu_type="a100"),
        job("z", cpu=3, mem=2 * GIB),
    ]
    rows = unmet_demand(jobs, dict.fromkeys("xyz", "capacity"))
    assert [r.key for r in rows] == [("default", "none"), ("gpu", "a100"), ("gpu", "h100")]
    assert rows[0].resources() == {"gpu": 0.0, "cpu": 3.0, "memory": float(2 * GIB)}


@pytest.mark.parametrize(
    ("quota", "counted"),
    [
        (None, True),
        (Quota(gpu=16), True),
        (Quota(gpu=4), False),  # 8 GPUs asked: beyond the team's quota, not a worker's size
        (Quota(cpu=2), False),
        (Quota(memory=GIB // 2), False),
        (Quota(gpu_by_type={"a100": 4}), False),
        (Quota(gpu_by_type={"h100": 4}), True),
    ],
)
def test_a_never_fits_job_beyond_its_team_quota_does_not_count(quota: Quota | None, counted: bool) -> None:
    j = job("j", cpu=4, gpu=8, gpu_type="a100")
    rows = unmet_demand([j], {"j": "never-fits"}, [Team("vision", quota=quota)])
    assert bool(rows) is counted


# --- through decide ------------------------------------------------------------------------------


def test_through_decide_only_jobs_that_more_workers_would_start() -> None:
    s = snap(
        [node("a", cpu=32)],
        [
            job("fits", cpu=1),  # placed
            job("busy", cpu=16),  # waits for capacity (and reserves it): 32 cores, 20 in use
            job("huge", cpu=64),  # larger than any worker
            job("burst", gpu=8, gpu_type="a100", pool="a100-burst"),  # a pool with no workers
            job("capped", "nlp", cpu=4),  # nlp is at its CPU quota
            job("over", "infra", gpu=8, gpu_type="a100", pool="a100-burst"),  # beyond infra's quota
        ],
        [run("r", "a", "vision", cpu=16), run("n", "a", "nlp", cpu=4)],
        [team("nlp", cpu=4), team("infra", gpu=4)],
    )
    d = decide(s)
    assert d.reason_codes == {
        "busy": "reservation",
        "huge": "never-fits",
        "burst": "never-fits",
        "capped": "quota",
        "over": "never-fits",
    }
    rows = cycle_demand(s, d)
    assert [(r.pool, r.gpu_type, r.jobs, r.cpu, r.gpu) for r in rows] == [
        ("a100-burst", "a100", 1, 1, 8),
        ("default", "none", 2, 80, 0),
    ]
    assert rows[0].largest == ReplicaShape(1, GIB, 8)
    assert rows[1].largest == ReplicaShape(64, GIB, 0)


def test_through_decide_a_reserved_and_a_reservation_holder_count() -> None:
    # One 8-GPU worker, 4 GPUs busy: the gang-free 8-GPU job gets a reservation; a later long
    # 4-GPU job would fit now but not before the reservation starts.
    d = decide_on(
        [gpu_node("a")],
        [job("big", gpu=8, gpu_type="a100", age=60), job("long", gpu=4, gpu_type="a100", runtime=86400)],
        [run("r", "a", gpus=(0, 1, 2, 3), runtime=3600)],
    )
    assert d.reason_codes == {"big": "reservation", "long": "reserved"}
    assert unmet_demand(
        [job("big", gpu=8, gpu_type="a100"), job("long", gpu=4, gpu_type="a100")], d.reason_codes
    ) == [PoolDemand("default", "a100", 2, 2, 2 * GIB, 12, ReplicaShape(1, GIB, 8))]
