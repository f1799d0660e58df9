"""The simulator, the FIFO baseline and the workloads: small cases whose outcome can be worked out by
hand, and properties over random ones."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainyard.scheduler.core import Decisions, Placement, decide
from trainyard.scheduler.fifo import decide_fifo
from trainyard.scheduler.simulate import (
    SimConfig,
    SimResult,
    SimulationError,
    entitlements,
    jain_index,
    percentile,
    simulate,
)
from trainyard.scheduler.snapshot import GIB, Quota, Snapshot, Team, Worker
from trainyard.scheduler.workload import (
    JobArrival,
    SpotReclaim,
    TraceError,
    Workload,
    parse_trace,
    synthetic,
    to_trace,
)

GPU = Worker("g1", 32, 256 * GIB, 1, "a100", pool="gpu")
CPU = Worker("c1", 32, 256 * GIB, pool="cpu")


def gjob(id_: str, t: float, runtime: float, *, team: str = "a", gpu: int = 1, **kw: object) -> JobArrival:
    return JobArrival(id_, t, team, runtime, gpu=gpu, gpu_type="a100", pool="gpu", **kw)  # type: ignore[arg-type]


def run(wl: Workload, policy: str = "scheduler", **cfg: float) -> SimResult:
    cfg.setdefault("cycle_s", 30.0)
    return simulate(
        wl, decide if policy == "scheduler" else decide_fifo, name=policy, config=SimConfig(**cfg)
    )


def waits(r: SimResult) -> dict[str, float | None]:
    return {g.name: g.wait_p50_s for g in r.teams}


# --- hand-checked outcomes -----------------------------------------------------------------------


def test_a_job_on_an_idle_worker_starts_at_once_and_uses_its_gpu() -> None:
    wl = Workload(
        "one", (gjob("j", 0, 100),), (Worker("g8", 32, 256 * GIB, 8, "a100", pool="gpu"),), horizon_s=200
    )
    r = run(wl)
    assert r.overall.wait_p50_s == 0
    assert r.overall.finished == 1
    assert r.gpu_utilization == pytest.approx(100 * 1 / (200 * 8))
    assert r.cycles == 1


@pytest.mark.parametrize("policy", ["scheduler", "fifo"])
def test_second_job_waits_for_the_first_to_finish(policy: str) -> None:
    wl = Workload("two", (gjob("a", 0, 100), gjob("b", 10, 100, team="b")), (GPU,), horizon_s=1000)
    r = run(wl, policy)
    assert waits(r) == {"a": 0, "b": 90}
    assert r.overall.finished == 2
    assert r.gpu_utilization == pytest.approx(200 / 1000)


def test_cycles_run_at_most_once_per_cycle_s() -> None:
    big = Worker("g8", 32, 256 * GIB, 8, "a100", pool="gpu")
    wl = Workload("cadence", (gjob("a", 0, 100), gjob("b", 5, 100, team="b")), (big,), horizon_s=1000)
    assert waits(run(wl, cycle_s=30)) == {"a": 0, "b": 25}
    assert waits(run(wl, cycle_s=1)) == {"a": 0, "b": 0}


def test_fifo_blocks_behind_its_head_where_the_scheduler_does_not() -> None:
    # a holds the only GPU; b (GPU) waits for it and, in FIFO, so does c, a CPU job with room to run.
    jobs = (
        gjob("a", 0, 1000),
        gjob("b", 1, 100, team="b"),
        JobArrival("c", 2, "c", 100, cpu=2, pool="cpu"),
    )
    wl = Workload("hol", jobs, (GPU, CPU), horizon_s=3000)
    assert waits(run(wl, "fifo")) == {"a": 0, "b": 999, "c": 998}
    assert waits(run(wl, "scheduler")) == {"a": 0, "b": 999, "c": 28}


def test_fair_share_lets_a_new_team_ahead_of_a_busy_ones_backlog() -> None:
    jobs = (gjob("a1", 0, 100), gjob("a2", 0, 100), gjob("a3", 0, 100), gjob("b1", 1, 100, team="b"))
    wl = Workload("fair", jobs, (GPU,), (Team("a"), Team("b")), horizon_s=1000)
    assert waits(run(wl, "scheduler"))["b"] == 99
    assert waits(run(wl, "fifo"))["b"] == 299


def test_preemption_loses_work_since_the_last_checkpoint_and_requeues() -> None:
    low = gjob("low", 0, 10_000, priority=0, preemptible=True, checkpoint_s=600)
    urgent = gjob("urgent", 1000, 500, team="b", priority=3)
    r = run(Workload("preempt", (low, urgent), (GPU,), horizon_s=20_000))
    assert r.preemptions_by_reason == {"priority": 1}
    by_prio = {g.name: g for g in r.priorities}
    # Preempted at 1000, stopped at 1060 (60 s grace); its last checkpoint was at 600.
    assert by_prio["low"].preemptions == 1
    assert by_prio["low"].gpu_hours_lost == pytest.approx(460 / 3600)
    assert by_prio["urgent"].wait_p50_s == 60
    # Back in the queue at 1060, it restarts when urgent ends (1560) with 10000 - 600 left.
    assert by_prio["low"].finished == 1
    assert r.overall.gpu_hours == pytest.approx((1060 + 500 + 9400) / 3600)
    assert r.overall.gpu_hours_lost == pytest.approx(460 / 3600)


def test_fifo_never_preempts() -> None:
    low = gjob("low", 0, 2000, priority=0, preemptible=True)
    urgent = gjob("urgent", 1000, 500, team="b", priority=3)
    r = run(Workload("p", (low, urgent), (GPU,), horizon_s=5000), "fifo")
    assert r.preemptions_by_reason == {}
    assert {g.name: g.wait_p50_s for g in r.priorities} == {"low": 0, "urgent": 1000}


def test_spot_reclaim_stops_the_jobs_on_the_worker_and_gives_it_back_later() -> None:
    spot = replace(GPU, id="s1", spot=True)
    job = gjob("j", 0, 1000, preemptible=True)  # no checkpoints: the whole attempt is lost
    wl = Workload("spot", (job,), (spot,), reclaims=(SpotReclaim("s1", 500, 1000),), horizon_s=5000)
    r = run(wl)
    assert r.preemptions_by_reason == {"spot reclaim": 1}
    assert r.overall.gpu_hours_lost == pytest.approx(560 / 3600)
    assert r.overall.finished == 1
    # Held 560 s, then gone for 1500 - 560 s; back at 1500, the job runs its 1000 s again.
    assert r.overall.gpu_hours == pytest.approx((560 + 1000) / 3600)
    assert r.gpu_utilization == pytest.approx(1560 / (5000 - (1500 - 560)))


def test_a_job_past_its_max_runtime_is_timed_out() -> None:
    r = run(Workload("t", (gjob("j", 0, 5000, max_runtime_s=1000),), (GPU,), horizon_s=3000))
    assert (r.overall.finished, r.overall.timed_out) == (0, 1)
    assert r.overall.gpu_hours == pytest.approx(1000 / 3600)


def test_a_job_that_never_started_counts_its_wait_so_far() -> None:
    jobs = (gjob("a", 0, 10_000), gjob("b", 100, 100, team="b"))
    r = run(Workload("censored", jobs, (GPU,), horizon_s=1000))
    b = next(g for g in r.teams if g.name == "b")
    assert (b.never_started, b.wait_p50_s) == (1, 900)


def test_gangs_start_all_replicas_together() -> None:
    nodes = tuple(Worker(f"g{i}", 32, 256 * GIB, 2, "a100", pool="gpu") for i in range(2))
    wl = Workload(
        "gang", (gjob("a", 0, 100), gjob("g", 1, 100, team="b", gpu=2, replicas=2)), nodes, horizon_s=1000
    )
    for policy in ("scheduler", "fifo"):
        assert waits(run(wl, policy))["b"] == 99, policy


def test_the_simulator_rejects_a_policy_that_over_allocates() -> None:
    def greedy(snap: Snapshot) -> Decisions:
        return Decisions(placements=[Placement(p.id, "g1", (0,)) for p in snap.pending])

    wl = Workload("bad", (gjob("a", 0, 100), gjob("b", 0, 100)), (GPU,), horizon_s=1000)
    with pytest.raises(SimulationError, match="GPUs"):
        simulate(wl, greedy)


def test_jain_index_on_known_inputs() -> None:
    assert jain_index([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0]) == pytest.approx(1 / 3)
    assert jain_index([1.0, 2.0]) == pytest.approx(9 / 10)
    with pytest.raises(ValueError):
        jain_index([])


def test_entitlements_are_weighted_and_capped() -> None:
    assert entitlements(100, {"a": 1, "b": 3}, {}) == pytest.approx({"a": 25, "b": 75})
    assert entitlements(100, {"a": 1, "b": 3}, {"b": 50}) == pytest.approx({"a": 50, "b": 50})
    assert entitlements(100, {"a": 1, "b": 1, "c": 1}, {"a": 10}) == pytest.approx(
        {"a": 10, "b": 45, "c": 45}
    )


def test_percentile_is_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert (percentile(xs, 50), percentile(xs, 95), percentile(xs, 99)) == (50, 95, 99)
    assert percentile([7.0], 99) == 7
    assert percentile([], 50) is None


def test_fairness_compares_backlogged_teams_against_their_weights() -> None:
    # Two teams with weights 1 and 3, both backlogged all along on one 4-GPU worker. FIFO serves
    # whoever came first (a, all its jobs); the scheduler approaches the 1:3 split.
    node = Worker("g4", 32, 256 * GIB, 4, "a100", pool="gpu")
    jobs = [gjob(f"a{i}", 0, 600) for i in range(40)] + [gjob(f"b{i}", 1, 600, team="b") for i in range(40)]
    wl = Workload("w", tuple(jobs), (node,), (Team("a", 1.0), Team("b", 3.0)), horizon_s=4 * 3600)
    sched = run(wl, "scheduler", fairness_window_s=3600)
    fifo = run(wl, "fifo", fairness_window_s=3600)
    assert sched.jain_windows >= 1
    assert sched.jain_index is not None and fifo.jain_index is not None
    assert sched.jain_index > 0.95
    assert fifo.jain_index < 0.6


def test_quota_caps_entitlement_so_a_binding_quota_is_not_unfair() -> None:
    node = Worker("g4", 32, 256 * GIB, 4, "a100", pool="gpu")
    jobs = [gjob(f"a{i}", 0, 600) for i in range(40)] + [gjob(f"b{i}", 0, 600, team="b") for i in range(40)]
    teams = (Team("a", 1.0, Quota(gpu=1)), Team("b", 1.0))
    r = run(Workload("q", tuple(jobs), (node,), teams, horizon_s=2 * 3600), "scheduler")
    assert r.jain_index == pytest.approx(1.0, abs=0.02)


# --- workloads and traces ------------------------------------------------------------------------

TRACE = [
    '{"type": "worker", "id": "g1", "cpu": 32, "memory": "256Gi", "gpu": 1, "gpu_type": "a100", "pool": "gpu"}',
    '{"type": "team", "name": "a", "weight": 2, "gpu_quota": 4}',
    "# comments and blank lines are skipped",
    "",
    '{"id": "j1", "submit": 0, "team": "a", "gpu": 1, "gpu_type": "a100", "pool": "gpu", "runtime": "100s"}',
    '{"id": "j2", "submit": "10s", "team": "b", "priority": "high", "gpu": 1, "pool": "gpu", "runtime": 100,'
    ' "checkpoint": "1m", "preemptible": true}',
]


def test_a_trace_parses_into_a_workload() -> None:
    wl = parse_trace(TRACE)
    assert [j.id for j in wl.jobs] == ["j1", "j2"]
    assert wl.jobs[1].priority == 2 and wl.jobs[1].checkpoint_s == 60 and wl.jobs[1].submit_s == 10
    assert wl.teams == (Team("a", 2.0, Quota(gpu=4)),)
    assert waits(run(wl)) == {"a": 0, "b": 90}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        ('{"id": "x", "submit": 0, "team": "a"}', "line 2: missing runtime"),
        ('{"id": "x", "submit": 0, "team": "a", "runtime": 5, "gpus": 1}', "line 2: unknown field(s) gpus"),
        (
            '{"id": "x", "submit": 0, "team": "a", "runtime": 5, "priority": "meh"}',
            "line 2: priority must be",
        ),
        ('{"id": "x", "submit": 0, "team": "a", "runtime": "soon"}', "line 2: duration 'soon'"),
        (
            '{"id": "x", "submit": 0, "team": "a", "runtime": 5, "replicas": 0}',
            "line 2: replicas must be at least 1",
        ),
        ('{"type": "robot"}', "line 2: unknown type 'robot'"),
    ],
)
def test_a_bad_trace_line_is_named(line: str, message: str) -> None:
    with pytest.raises(TraceError) as e:
        parse_trace([TRACE[0], line], name="t.jsonl")
    assert str(e.value).startswith("t.jsonl ")
    assert message in str(e.value)


def test_a_trace_needs_workers_and_known_reclaim_targets() -> None:
    with pytest.raises(TraceError, match="no worker lines"):
        parse_trace([TRACE[4]])
    with pytest.raises(TraceError, match="unknown worker"):
        parse_trace([TRACE[0], '{"type": "reclaim", "worker": "zz", "at": 5, "duration": 60}'])


def test_synthetic_workloads_are_deterministic_per_seed_and_round_trip_as_traces() -> None:
    a, b, c = synthetic("small", seed=1), synthetic("small", seed=1), synthetic("small", seed=2)
    assert a == b
    assert a.jobs != c.jobs
    assert parse_trace(to_trace(a), name=a.name) == a
    assert all(json.loads(line) for line in to_trace(a))
    # The mix the target scale promises: 100k a day, 5 minutes to 24 hours, spot and quotas.
    kinds = {j.kind for j in a.jobs}
    assert kinds == {"eval", "batch", "train"}
    assert any(w.spot for w in a.workers) and a.reclaims
    assert any(t.quota for t in a.teams) and len({t.weight for t in a.teams}) > 2
    assert min(j.runtime_s for j in a.jobs if j.submit_s >= 0) >= 300
    assert max(j.runtime_s for j in a.jobs) <= 86400


def test_a_simulation_is_deterministic() -> None:
    wl = replace(synthetic("small", seed=3), horizon_s=6 * 3600)
    assert run(wl) == run(wl)
    assert run(wl, "fifo") == run(wl, "fifo")


# --- properties ----------------------------------------------------------------------------------


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    n_workers = draw(st.integers(1, 4))
    workers = []
    for i in range(n_workers):
        gpu = draw(st.sampled_from([0, 2, 4]))
        workers.append(
            Worker(
                f"w{i}",
                draw(st.sampled_from([4.0, 8.0])),
                draw(st.sampled_from([8, 32])) * GIB,
                gpu,
                "a100" if gpu else None,
                pool="gpu" if gpu else "cpu",
                spot=draw(st.booleans()),
            )
        )
    jobs = []
    for i in range(draw(st.integers(1, 12))):
        gpu = draw(st.sampled_from([0, 0, 1, 2]))
        jobs.append(
            JobArrival(
                f"j{i}",
                draw(st.floats(0, 2000, allow_nan=False)),
                draw(st.sampled_from(["a", "b", "c"])),
                draw(st.floats(10, 3000, allow_nan=False)),
                priority=draw(st.integers(0, 3)),
                cpu=draw(st.sampled_from([1.0, 2.0, 4.0])),
                memory=draw(st.sampled_from([1, 4, 8])) * GIB,
                gpu=gpu,
                gpu_type="a100" if gpu else None,
                pool="gpu" if gpu else draw(st.sampled_from([None, "cpu"])),
                preemptible=draw(st.booleans()),
                replicas=draw(st.sampled_from([1, 1, 2])),
                max_runtime_s=draw(st.sampled_from([1000.0, 86400.0])),
                checkpoint_s=draw(st.sampled_from([None, 100.0])),
            )
        )
    spot = [w.id for w in workers if w.spot]
    reclaims = tuple(
        SpotReclaim(draw(st.sampled_from(spot)), draw(st.floats(0, 3000)), draw(st.floats(60, 2000)))
        for _ in range(draw(st.integers(0, 2) if spot else st.just(0)))
    )
    teams = (Team("a", 2.0, Quota(gpu=draw(st.sampled_from([None, 2])))), Team("b", 1.0))
    return Workload(
        "random",
        tuple(jobs),
        tuple(workers),
        teams,
        reclaims,
        horizon_s=draw(st.sampled_from([None, 3000.0])),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.sampled_from(["scheduler", "fifo"]))
def test_every_event_keeps_workers_within_capacity(wl: Workload, policy: str) -> None:
    # The simulator checks every placement against its own tally of each worker (capacity, GPU
    # indices, spot, pool, whole gangs) and raises SimulationError on a breach.
    r = run(wl, policy, cycle_s=30)
    assert 0.0 <= r.gpu_utilization <= 1.0 + 1e-9
    o = r.overall
    assert o.started + o.never_started == o.jobs
    assert o.finished + o.timed_out <= o.started
    for series in r.series.share.values():
        assert all(0.0 <= s <= 1.0 + 1e-9 for s in series)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_without_a_horizon_every_job_that_fits_somewhere_eventually_runs(wl: Workload) -> None:
    wl = replace(wl, horizon_s=None, reclaims=())
    r = run(wl, "scheduler")
    # Reaching the end means the queue settled: whatever is left must be a job no worker (or no
    # quota) could ever hold, even with the fleet empty.
    quota = {t.name: t.quota.gpu for t in wl.teams if t.quota is not None and t.quota.gpu is not None}

    def fits(j: JobArrival) -> bool:
        if j.gpu * j.replicas > quota.get(j.team, 10**9):
            return False
        slots = 0
        for w in wl.workers:
            if (j.pool is None or w.pool == j.pool) and (j.preemptible or not w.spot):
                slots += min(int(w.cpu // j.cpu), int(w.memory // j.memory), w.gpu // j.gpu if j.gpu else 99)
        return slots >= j.replicas

    assert r.overall.started == sum(1 for j in wl.jobs if fits(j))


def test_teams_whose_jobs_start_promptly_are_not_backlogged() -> None:
    # Jobs wait at most one cycle: nobody is held back, so there is no contest to judge.
    node = Worker("g8", 32, 256 * GIB, 8, "a100", pool="gpu")
    jobs = [gjob(f"a{i}", i * 100.0, 50) for i in range(30)] + [
        gjob(f"b{i}", i * 100.0 + 7, 50, team="b") for i in range(30)
    ]
    r = run(Workload("calm", tuple(jobs), (node,), horizon_s=3600))
    assert (r.jain_index, r.jain_windows) == (None, 0)
