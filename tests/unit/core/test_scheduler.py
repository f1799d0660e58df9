"""Scheduler v1: tables of cases and properties over random snapshots."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trainyard.scheduler.placement import JobDemand, WorkerCapacity, schedule

GI = 1 << 30


def job(
    id_: str,
    *,
    prio: int = 1,
    at: float = 0.0,
    cpu: float = 1,
    mem: int = GI,
    gpu: int = 0,
    gpu_type: str | None = None,
    pool: str | None = None,
) -> JobDemand:
    return JobDemand(id_, prio, at, cpu, mem, gpu, gpu_type, pool, 0)


def node(
    id_: str,
    *,
    cpu: float = 8,
    mem: int = 32 * GI,
    gpu: int = 0,
    gpu_type: str | None = None,
    pool: str = "default",
    used_gpus: frozenset[int] = frozenset(),
    used_cpu: float = 0,
) -> WorkerCapacity:
    return WorkerCapacity(id_, pool, cpu, mem, gpu, gpu_type, used_cpu=used_cpu, used_gpus=used_gpus)


def test_priority_then_age() -> None:
    d = schedule(
        [job("old", at=1, cpu=4), job("new-high", prio=2, at=5, cpu=4), job("newer", at=3, cpu=4)],
        [node("w", cpu=8)],
    )
    assert [p.job_id for p in d.placements] == ["new-high", "old"]
    assert d.reasons["newer"] == "waiting for capacity: needs 4 cpu, 1Gi memory"


def test_best_fit_keeps_big_nodes_whole() -> None:
    d = schedule(
        [job("one", gpu=1, gpu_type="a100"), job("eight", gpu=8, gpu_type="a100")],
        [
            node("big", gpu=8, gpu_type="a100"),
            node("small", gpu=2, gpu_type="a100", used_gpus=frozenset({0})),
        ],
    )
    placed = {p.job_id: (p.worker_id, p.gpu_indices) for p in d.placements}
    assert placed == {"one": ("small", (1,)), "eight": ("big", tuple(range(8)))}


def test_hard_constraints_and_reasons() -> None:
    d = schedule(
        [
            job("h100", gpu=1, gpu_type="h100"),
            job("huge", cpu=64),
            job("gpu-pool", pool="gpu"),
            job("later", gpu=4, gpu_type="a100"),
        ],
        [node("a", gpu=4, gpu_type="a100", used_gpus=frozenset({0, 1}))],
    )
    assert d.placements == []
    assert "gpu type h100" in d.reasons["h100"]
    assert "largest registered is 8 cpu" in d.reasons["huge"]
    assert "pool gpu" in d.reasons["gpu-pool"]
    assert "needs 4×a100 on one worker; largest free is 2" in d.reasons["later"]
    assert schedule([job("x")], []).reasons["x"] == "no schedulable workers are registered"


def test_unschedulable_workers_get_nothing() -> None:
    w = WorkerCapacity("w", "default", 8, 32 * GI, 0, None, schedulable=False)
    assert schedule([job("a")], [w]).placements == []


jobs_st = st.lists(
    st.builds(
        job,
        st.uuids().map(str),
        prio=st.integers(0, 3),
        at=st.floats(0, 100),
        cpu=st.sampled_from([0.5, 1, 2, 4, 8]),
        mem=st.sampled_from([GI, 4 * GI, 16 * GI]),
        gpu=st.integers(0, 4),
        gpu_type=st.sampled_from([None, "a100", "h100"]),
        pool=st.sampled_from([None, "default", "gpu"]),
    ),
    max_size=30,
    unique_by=lambda j: j.id,
)
nodes_st = st.lists(
    st.builds(
        node,
        st.uuids().map(str),
        cpu=st.sampled_from([2, 8, 32]),
        mem=st.sampled_from([8 * GI, 64 * GI]),
        gpu=st.sampled_from([0, 2, 8]),
        gpu_type=st.sampled_from(["a100", "h100"]),
        pool=st.sampled_from(["default", "gpu"]),
    ),
    max_size=6,
    unique_by=lambda w: w.id,
)


@settings(max_examples=300, deadline=None)
@given(jobs_st, nodes_st)
def test_placements_respect_capacity_and_constraints(
    jobs: list[JobDemand], nodes: list[WorkerCapacity]
) -> None:
    d = schedule(jobs, nodes)
    by_job = {j.id: j for j in jobs}
    by_node = {w.id: w for w in nodes}
    assert {p.job_id for p in d.placements}.isdisjoint(d.reasons)
    assert {p.job_id for p in d.placements} | set(d.reasons) == set(by_job)
    for wid, w in by_node.items():
        mine = [p for p in d.placements if p.worker_id == wid]
        assert sum(by_job[p.job_id].cpu for p in mine) <= w.cpu + 1e-9
        assert sum(by_job[p.job_id].memory for p in mine) <= w.memory
        gpus = [g for p in mine for g in p.gpu_indices]
        assert len(gpus) == len(set(gpus)) and all(0 <= g < w.gpu for g in gpus)
    for p in d.placements:
        j, w = by_job[p.job_id], by_node[p.worker_id]
        assert len(p.gpu_indices) == j.gpu
        assert j.pool is None or j.pool == w.pool
        assert j.gpu == 0 or j.gpu_type is None or j.gpu_type == w.gpu_type
