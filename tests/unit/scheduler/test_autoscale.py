"""The simulator's autoscaler: workers of the needed shape after N minutes of demand and a boot delay,
removed after M idle minutes, worker-hours counted from the ask; small cases worked out by hand."""

from __future__ import annotations

import pytest

from trainyard.scheduler.autoscale import Autoscale, fits, simulate_autoscaled, workers_for
from trainyard.scheduler.core import decide
from trainyard.scheduler.demand import PoolDemand, ReplicaShape
from trainyard.scheduler.simulate import SimConfig, SimResult, simulate
from trainyard.scheduler.snapshot import GIB, Worker
from trainyard.scheduler.workload import JobArrival, Workload

CONFIG = SimConfig(cycle_s=30.0)
POLICY = Autoscale(scale_after_s=300, boot_s=300, idle_s=600)


def a100(id_: str, *, spot: bool = False) -> Worker:
    return Worker(id_, 32, 256 * GIB, 8, "a100", pool="gpu", spot=spot)


def gjob(id_: str, t: float, runtime: float, gpu: int = 8, **kw: object) -> JobArrival:
    return JobArrival(id_, t, "a", runtime, gpu=gpu, gpu_type="a100", pool="gpu", **kw)  # type: ignore[arg-type]


def both(wl: Workload) -> tuple[SimResult, SimResult]:
    return simulate(wl, decide, config=CONFIG), simulate_autoscaled(wl, decide, POLICY, config=CONFIG)


def test_a_worker_is_asked_for_after_the_wait_boots_runs_the_job_and_goes_when_idle() -> None:
    wl = Workload("one", (gjob("j", 0, 3600),), (a100("g1"),), horizon_s=7200)
    fixed, scaled = both(wl)
    assert fixed.overall.wait_p50_s == 0
    assert fixed.worker_hours == pytest.approx(2.0)
    assert fixed.workers_started == 0
    # Demand from t=0; asked for at 300 (scale_after), schedulable at 600 (boot), the job runs
    # 600..4200, the worker is removed at 4800 (idle): billed from 300 to 4800.
    assert scaled.overall.wait_p50_s == pytest.approx(600)
    assert scaled.overall.finished == 1
    assert scaled.worker_hours == pytest.approx(4500 / 3600)
    assert scaled.workers_started == 1


def test_demand_shorter_than_the_wait_starts_nothing() -> None:
    # A spot worker stays (as in the fixed fleet); the second job waits 100 s for it, less than 300.
    jobs = (gjob("a", 0, 100, preemptible=True), gjob("b", 0, 100, preemptible=True))
    wl = Workload("short", jobs, (a100("s1", spot=True), a100("g1")), horizon_s=3600)
    fixed, scaled = both(wl)
    assert scaled.workers_started == 0
    assert scaled.overall.wait_p95_s == pytest.approx(100)
    assert scaled.worker_hours == pytest.approx(1.0)  # the spot worker only
    assert fixed.worker_hours == pytest.approx(2.0)


def test_enough_workers_for_the_demand_at_once_and_none_past_the_fleet() -> None:
    jobs = tuple(gjob(f"j{i}", 0, 3600) for i in range(4))
    wl = Workload("burst", jobs, tuple(a100(f"g{i}") for i in range(3)), horizon_s=20_000)
    _, scaled = both(wl)
    assert scaled.workers_started == 3  # 32 GPUs asked for, 3 workers of 8 there are
    assert scaled.overall.wait_p50_s == pytest.approx(600)
    assert scaled.overall.finished == 4  # the fourth after one of the first three
    assert scaled.overall.wait_p95_s == pytest.approx(4200)


def test_on_a_synthetic_day_the_autoscaled_fleet_costs_fewer_worker_hours() -> None:
    from trainyard.scheduler.workload import synthetic

    wl = synthetic("small", seed=1)
    fixed, scaled = both(wl)
    assert 0 < scaled.worker_hours < fixed.worker_hours
    assert scaled.workers_started > 0


@pytest.mark.parametrize(
    ("row", "worker", "ok"),
    [
        (PoolDemand("gpu", "a100", 1, 4, GIB, 8, ReplicaShape(4, GIB, 8)), a100("g"), True),
        (PoolDemand("cpu", "a100", 1, 4, GIB, 8, ReplicaShape(4, GIB, 8)), a100("g"), False),  # pool
        (PoolDemand("gpu", "h100", 1, 4, GIB, 8, ReplicaShape(4, GIB, 8)), a100("g"), False),  # type
        (PoolDemand("gpu", "a100", 1, 64, GIB, 8, ReplicaShape(64, GIB, 8)), a100("g"), False),  # cores
        (PoolDemand("default", "any", 1, 4, GIB, 1, ReplicaShape(4, GIB, 1)), a100("g"), True),
        (PoolDemand("default", "none", 1, 4, GIB, 0, ReplicaShape(4, GIB, 0)), a100("g"), False),
        (PoolDemand("default", "none", 1, 4, GIB, 0, ReplicaShape(4, GIB, 0)), Worker("c", 8, GIB), True),
    ],
)
def test_fits(row: PoolDemand, worker: Worker, ok: bool) -> None:
    assert fits(worker, row) is ok


@pytest.mark.parametrize(
    ("cpu", "memory", "gpu", "n"),
    [(1, GIB, 1, 1), (1, GIB, 9, 2), (64, GIB, 0, 2), (1, 300 * GIB, 0, 2), (0, 0, 0, 1)],
)
def test_workers_for(cpu: float, memory: int, gpu: int, n: int) -> None:
    assert workers_for(PoolDemand("gpu", "a100", 1, cpu, memory, gpu), a100("g")) == n
