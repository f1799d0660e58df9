"""Job arrays in the scheduler: ``parallelism`` caps how many of an array's tasks run at once, counted
from the snapshot's running tasks and the cycle's own placements; fair share and quotas apply to each
task as to any job."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.scheduler.helpers import decide_on, job, node, run, team
from tests.unit.scheduler.test_properties import check, snapshots
from trainyard.scheduler.core import decide
from trainyard.scheduler.snapshot import PendingJob, RunningJob, Snapshot


def task(array: str, index: int, limit: int | None, **kw: object) -> PendingJob:
    return replace(job(f"{array}-{index}", **kw), array_id=array, array_limit=limit)  # type: ignore[arg-type]


def running_task(array: str, index: int, worker: str, **kw: object) -> RunningJob:
    return replace(run(f"{array}-{index}", worker, **kw), array_id=array)  # type: ignore[arg-type]


def test_parallelism_caps_the_tasks_placed_in_one_cycle() -> None:
    d = decide_on([node("w1")], [task("a", i, 2) for i in range(5)])
    assert [p.job_id for p in d.placements] == ["a-0", "a-1"]
    assert {d.reason_codes[f"a-{i}"] for i in (2, 3, 4)} == {"array-limit"}
    assert d.reasons["a-2"] == "array limit: array a runs at most 2 of its tasks at once"


def test_running_tasks_count_against_the_cap() -> None:
    d = decide_on([node("w1")], [task("a", i, 3) for i in range(2, 6)], [running_task("a", 0, "w1")])
    assert len(d.placements) == 2
    full = decide_on(
        [node("w1")], [task("a", 9, 2)], [running_task("a", 0, "w1"), running_task("a", 1, "w1")]
    )
    assert full.placements == [] and full.reason_codes["a-9"] == "array-limit"


def test_no_cap_without_parallelism_and_arrays_are_capped_apart() -> None:
    free = decide_on([node("w1")], [task("a", i, None) for i in range(6)])
    assert len(free.placements) == 6
    two = decide_on([node("w1")], [task("a", i, 1) for i in range(3)] + [task("b", i, 2) for i in range(3)])
    assert Counter(p.job_id[0] for p in two.placements) == {"a": 1, "b": 2}


def test_a_capped_task_neither_preempts_nor_reserves() -> None:
    # Urgent tasks over a full, preemptible worker: the one that may run preempts, the capped one
    # waits for its array, not for capacity.
    full = [run(f"low{i}", "w1", team="other", cpu=16, preemptible=True, prio=0) for i in range(2)]
    d = decide_on([node("w1")], [task("a", i, 1, prio=3, cpu=16) for i in range(2)], full)
    assert d.reason_codes["a-1"] == "array-limit"
    assert len(d.preemptions) == 1


def test_quotas_apply_to_each_task() -> None:
    d = decide_on([node("w1")], [task("a", i, 10, cpu=4) for i in range(5)], teams=[team("vision", cpu=8.0)])
    assert len(d.placements) == 2
    assert {d.reason_codes[f"a-{i}"] for i in (2, 3, 4)} == {"quota"}


@st.composite
def array_snapshots(draw: st.DrawFn) -> Snapshot:
    """A random snapshot whose pending and running jobs are partly tasks of a few arrays."""
    s = draw(snapshots())
    limits = {a: draw(st.integers(1, 4)) for a in ("x", "y", "z")}
    arrays = st.sampled_from([None, "x", "y", "z"])
    pending = []
    for p in s.pending:
        a = draw(arrays)
        pending.append(replace(p, array_id=a, array_limit=limits[a] if a else None, replicas=1) if a else p)
    running = []
    for r in s.running:
        a = draw(arrays)
        running.append(replace(r, array_id=a) if a and r.replica == 0 else r)
    extra = draw(st.integers(0, 12))  # a big array of small tasks, to reach the cap often
    for i in range(extra):
        pending.append(
            PendingJob(f"x-{i}", "a", cpu=0.5, memory=1 << 29, array_id="x", array_limit=limits["x"])
        )
    return replace(s, pending=tuple(pending), running=tuple(running))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array_snapshots())
def test_never_more_than_parallelism_tasks_run_per_array(s: Snapshot) -> None:
    d = decide(s)
    check(s, d)  # every other invariant holds with arrays too
    limit = {p.array_id: p.array_limit for p in s.pending if p.array_id is not None}
    running = Counter(r.array_id for r in s.running if r.array_id is not None)
    placed = Counter(p.job_id for p in d.placements)
    pending = {p.id: p for p in s.pending}
    started = Counter(pending[j].array_id for j in placed if pending[j].array_id is not None)
    # A task that preempted or reserved capacity starts on it: it holds one of its array's slots.
    holding = Counter(
        pending[j].array_id
        for j, code in d.reason_codes.items()
        if code in ("preempting", "draining", "reservation") and pending[j].array_id is not None
    )
    for array in set(started) | set(holding):
        cap = limit[array]
        assert cap is not None
        taken = started[array] + holding[array]
        assert taken <= max(0, cap - running[array]), (array, running[array], taken, cap)
    # A task that waits for its array's cap is never placed, and its reason says why.
    for job_id, code in d.reason_codes.items():
        if code == "array-limit":
            p = pending[job_id]
            assert p.array_id is not None and p.array_limit is not None
            assert running[p.array_id] + started[p.array_id] + holding[p.array_id] >= p.array_limit
