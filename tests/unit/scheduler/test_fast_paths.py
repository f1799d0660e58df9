"""The scheduler's shortcuts against plain references: each must give what the long way gives.

* Reservations rank the workers once per demand and reuse the ranking while no worker's holds
  change; a queue of identical blocked jobs with small jobs placed in between must still reserve,
  for each blocked job, the unreserved worker where it starts earliest (ties to the lower id).
* ``quota_block`` answers the common case (far from every limit) without building its checks; it
  must return exactly what the full checks return.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.scheduler.helpers import NOW, job, node, run, snap
from trainyard.scheduler.capacity import EPS
from trainyard.scheduler.core import decide
from trainyard.scheduler.reasons import amount
from trainyard.scheduler.snapshot import GIB, PendingJob, Quota, SchedulerConfig, Team
from trainyard.scheduler.teams import TeamState, quota_block

# --- reservations --------------------------------------------------------------------------------


@st.composite
def blocked_queues(draw: st.DrawFn) -> tuple[list[list[tuple[float, float]]], str]:
    """Workers' running jobs as (cpu, runtime) lists, each worker with at least one and one core free;
    the queue as a string of B (a whole-worker job that fits nowhere) and s (a one-core job)."""
    n = draw(st.integers(2, 8))
    workers = []
    for _ in range(n):
        jobs = draw(
            st.lists(
                st.tuples(st.sampled_from([1.0, 2.0, 3.0]), st.sampled_from([900.0, 1800.0, 3600.0, 7200.0])),
                min_size=1,
                max_size=3,
            )
        )
        total = 0.0
        kept = []
        for cpu, runtime in jobs:
            if total + cpu <= 7:
                kept.append((cpu, runtime))
                total += cpu
        workers.append(kept)
    queue = draw(st.text(alphabet="Bs", min_size=1, max_size=12))
    return workers, queue


@settings(max_examples=60, deadline=None)
@given(blocked_queues())
def test_each_blocked_job_reserves_the_earliest_unreserved_worker(
    case: tuple[list[list[tuple[float, float]]], str],
) -> None:
    running_per_worker, queue = case
    workers = [node(f"w{i}", cpu=8) for i in range(len(running_per_worker))]
    running = [
        run(f"r{i}-{k}", f"w{i}", cpu=cpu, runtime=runtime, started_ago=600.0)
        for i, jobs in enumerate(running_per_worker)
        for k, (cpu, runtime) in enumerate(jobs)
    ]
    # One team, one priority: the queue is visited in queued order (oldest first).
    pending = [
        job(f"{kind}{i:02d}", cpu=8 if kind == "B" else 1, age=1000.0 - i, runtime=1200.0 + 60 * i)
        for i, kind in enumerate(queue)
    ]
    config = SchedulerConfig(max_reservations=len(queue))
    d = decide(snap(workers, pending, running, config=config))

    holds: dict[str, list[tuple[float, float]]] = {w.id: [] for w in workers}
    for r in running:
        holds[r.worker_id].append((max(r.started_at + r.max_runtime_s, NOW), r.cpu))
    placed = {p.job_id: p.worker_id for p in d.placements}
    reserved = {r.job_id: r for r in d.reservations}
    taken: set[str] = set()
    by_id = {p.id: p for p in pending}
    assert d.order == [p.id for p in pending]
    for job_id in d.order:
        pj = by_id[job_id]
        if job_id in placed:
            holds[placed[job_id]].append((NOW + pj.max_runtime_s, pj.cpu))
            continue
        if d.reason_codes[job_id] == "reserved":
            # It fits now, but only where another job's reservation holds the capacity.
            assert any(earliest_start(h, pj.cpu) == NOW for h in holds.values())
            assert job_id not in reserved
            continue
        options = sorted((earliest_start(holds[w], pj.cpu), w) for w in holds if w not in taken)
        if not options:
            assert job_id not in reserved
            continue
        start, worker = options[0]
        assert job_id in reserved, d.reasons[job_id]
        assert reserved[job_id].worker_ids == (worker,)
        assert reserved[job_id].start_at == start
        taken.add(worker)


def test_a_placement_between_blocked_jobs_moves_the_next_reservation() -> None:
    # Each worker is full but one core until +300, +600, +900, +1200 s. Two blocked jobs reserve w0
    # and w1; a long one-core job then lands on w2 (the reserved ones cannot take it), so the third
    # blocked job starts earliest on w3, not on w2 as the ranking made before that placement says.
    workers = [node(f"w{i}", cpu=8) for i in range(4)]
    running = [run(f"r{i}", f"w{i}", cpu=7, runtime=900.0 + 300 * i, started_ago=600.0) for i in range(4)]
    pending = [
        job("B0", cpu=8, age=40),
        job("B1", cpu=8, age=30),
        job("s", cpu=1, age=20, runtime=7200.0),
        job("B2", cpu=8, age=10),
    ]
    d = decide(snap(workers, pending, running))
    assert [(p.job_id, p.worker_id) for p in d.placements] == [("s", "w2")]
    assert [(r.job_id, r.worker_ids, r.start_at) for r in d.reservations] == [
        ("B0", ("w0",), NOW + 300),
        ("B1", ("w1",), NOW + 600),
        ("B2", ("w3",), NOW + 1200),
    ]


def earliest_start(holds: list[tuple[float, float]], cpu: float, capacity: float = 8.0) -> float:
    """When ``cpu`` cores are free on the worker if every hold runs to its end."""
    start = NOW
    held = sum(c for _, c in holds)
    for end, c in sorted(holds):
        if held + cpu <= capacity + EPS:
            break
        start = end
        held -= c
    return start


# --- quota_block ---------------------------------------------------------------------------------


def reference_quota_block(team: TeamState, job: PendingJob) -> tuple[str, str] | None:
    """``quota_block`` as it was before its shortcut: every check built, then tested in order."""
    quota = team.team.quota
    if quota is None:
        return None
    n = job.replicas
    checks: list[tuple[str, float | None, float, float]] = [
        ("GPU", quota.gpu, team.usage[2], job.gpu * n),
        ("CPU", quota.cpu, team.usage[0], job.cpu * n),
        ("memory", quota.memory, team.usage[1], job.memory * n),
    ]
    if job.gpu and job.gpu_type and job.gpu_type in quota.gpu_by_type:
        typed = (
            f"{job.gpu_type} GPU",
            quota.gpu_by_type[job.gpu_type],
            team.gpus_by_type.get(job.gpu_type, 0),
        )
        checks.insert(0, (*typed, job.gpu * n))
    for label, limit, _, need in checks:
        if limit is not None and need > limit + EPS:
            return (
                "never-fits",
                f"needs {amount(label, need)} {label}, more than team {team.name}'s {label} quota "
                f"of {amount(label, limit)}",
            )
    for label, limit, used, need in checks:
        if limit is not None and need > 0 and used + need > limit + EPS:
            return (
                "quota",
                f"team {team.name} at {label} quota {amount(label, used)}/{amount(label, limit)}",
            )
    return None


maybe_small = st.one_of(st.none(), st.integers(0, 16))


@settings(max_examples=400, deadline=None)
@given(
    gpu_limit=maybe_small,
    cpu_limit=st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 4.0, 7.5, 16.0])),
    mem_limit=st.one_of(st.none(), st.sampled_from([0, GIB, 8 * GIB, 64 * GIB])),
    typed=st.dictionaries(st.sampled_from(["a100", "h100", ""]), st.integers(0, 16), max_size=2),
    used=st.tuples(
        st.sampled_from([0.0, 0.5, 1.0, 4.0, 15.5, 16.0]),
        st.sampled_from([0.0, GIB, 8 * GIB, 63 * GIB]),
        st.integers(0, 16),
    ),
    by_type=st.dictionaries(st.sampled_from(["a100", "h100", ""]), st.integers(0, 16), max_size=2),
    cpu=st.sampled_from([0.0, 0.5, 1.0, 4.0, 8.0]),
    mem=st.sampled_from([0, GIB // 2, GIB, 16 * GIB]),
    gpu=st.integers(0, 8),
    gpu_type=st.sampled_from([None, "a100", "h100", ""]),
    replicas=st.integers(1, 3),
)
def test_quota_block_matches_the_full_checks(
    gpu_limit: int | None,
    cpu_limit: float | None,
    mem_limit: int | None,
    typed: dict[str, int],
    used: tuple[float, int, int],
    by_type: dict[str, int],
    cpu: float,
    mem: int,
    gpu: int,
    gpu_type: str | None,
    replicas: int,
) -> None:
    quota = Quota(cpu=cpu_limit, memory=mem_limit, gpu=gpu_limit, gpu_by_type=typed)
    team = TeamState(
        "vision", Team("vision", quota=quota), [used[0], float(used[1]), float(used[2])], by_type, 0.0, 1.0
    )
    pj = PendingJob("j", "vision", cpu=cpu, memory=mem, gpu=gpu, gpu_type=gpu_type, replicas=replicas)
    assert quota_block(team, pj) == reference_quota_block(team, pj)
