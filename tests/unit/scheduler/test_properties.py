"""Scheduler v2 properties over random snapshots: what must hold whatever the workload."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainyard.scheduler.core import Decisions, decide
from trainyard.scheduler.snapshot import (
    GIB,
    PendingJob,
    Quota,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Team,
    Worker,
)

NOW = 50_000.0
TEAMS = ("a", "b", "c")


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    n_workers = draw(st.integers(0, 6))
    workers = []
    for i in range(n_workers):
        workers.append(
            Worker(
                f"w{i}",
                cpu=draw(st.sampled_from([4.0, 8.0, 32.0])),
                memory=draw(st.sampled_from([16, 64, 256])) * GIB,
                gpu=draw(st.sampled_from([0, 2, 4, 8])),
                gpu_type=draw(st.sampled_from(["a100", "h100"])),
                pool=draw(st.sampled_from(["default", "gpu"])),
                region=draw(st.sampled_from(["east", "west"])),
                spot=draw(st.booleans()),
                schedulable=i % 3 != 0 or draw(st.booleans()),
                cached_uris=frozenset(draw(st.lists(st.sampled_from(["d1", "d2", "d3"]), max_size=2))),
            )
        )
    running: list[RunningJob] = []
    for w in workers:
        cpu, mem, gpus = w.cpu, w.memory, list(range(w.gpu))
        for k in range(draw(st.integers(0, 3))):
            c = draw(st.sampled_from([1.0, 2.0, 4.0]))
            m = draw(st.sampled_from([1, 8])) * GIB
            g = draw(st.integers(0, min(len(gpus), 4)))
            if c > cpu or m > mem:
                break
            cpu, mem = cpu - c, mem - m
            held, gpus = tuple(gpus[:g]), gpus[g:]
            started = NOW - draw(st.sampled_from([0.0, 100.0, 5000.0]))
            running.append(
                RunningJob(
                    f"r-{w.id}-{k}",
                    draw(st.sampled_from(TEAMS)),
                    w.id,
                    priority=draw(st.integers(0, 3)),
                    cpu=c,
                    memory=m,
                    gpu=g,
                    gpu_indices=held,
                    preemptible=w.spot or draw(st.booleans()),
                    started_at=started,
                    last_checkpoint_at=draw(st.sampled_from([None, started + 50])),
                    max_runtime_s=draw(st.sampled_from([60.0, 600.0, 7200.0])),
                    terminating=k == 0 and draw(st.booleans()),
                )
            )
    pending = []
    for i in range(draw(st.integers(0, 20))):
        gpu = draw(st.sampled_from([0, 0, 1, 2, 4, 8]))
        region = draw(st.sampled_from([None, "east", "west"]))
        pending.append(
            PendingJob(
                f"p{i}",
                draw(st.sampled_from(TEAMS)),
                priority=draw(st.integers(0, 3)),
                queued_at=NOW - draw(st.sampled_from([0.0, 1000.0, 9000.0])),
                cpu=draw(st.sampled_from([0.5, 1.0, 4.0, 16.0])),
                memory=draw(st.sampled_from([1, 8, 32])) * GIB,
                gpu=gpu,
                gpu_type=draw(st.sampled_from([None, "a100", "h100"])) if gpu else None,
                pool=draw(st.sampled_from([None, "default", "gpu"])),
                region=region,
                require_region=region is not None and draw(st.booleans()),
                data_uris=tuple(draw(st.lists(st.sampled_from(["d1", "d2"]), max_size=2, unique=True))),
                preemptible=draw(st.booleans()),
                replicas=draw(st.sampled_from([1, 1, 1, 2, 3])),
                max_runtime_s=draw(st.sampled_from([60.0, 600.0, 7200.0])),
            )
        )
    teams = []
    for name in TEAMS:
        quota = None
        if draw(st.booleans()):
            quota = Quota(
                cpu=draw(st.sampled_from([None, 8.0, 40.0])),
                gpu=draw(st.sampled_from([None, 2, 8])),
                gpu_by_type=draw(st.sampled_from([{}, {"h100": 2}])),
            )
        teams.append(Team(name, draw(st.sampled_from([0.5, 1.0, 3.0])), quota))
    config = SchedulerConfig(aging_s_per_priority_step=draw(st.sampled_from([0.0, 3600.0])))
    return Snapshot(NOW, tuple(workers), tuple(pending), tuple(running), tuple(teams), config)


def check(s: Snapshot, d: Decisions) -> None:
    jobs = {p.id: p for p in s.pending}
    workers = {w.id: w for w in s.workers}
    # every pending job is either placed or has a reason, never both
    placed = defaultdict(list)
    for p in d.placements:
        placed[p.job_id].append(p)
    assert set(placed).isdisjoint(d.reasons)
    assert set(placed) | set(d.reasons) == set(jobs)
    assert set(placed).isdisjoint(d.claims)
    # gangs: all replicas or none, ranks 0..N-1
    for jid, ps in placed.items():
        j = jobs[jid]
        assert sorted(p.rank for p in ps) == list(range(j.replicas))
        assert all(p.world_size == j.replicas and len(p.gpu_indices) == j.gpu for p in ps)
    # hard constraints, on placements and on capacity claimed for later
    homes = [(jobs[p.job_id], workers[p.worker_id]) for p in d.placements]
    homes += [(jobs[jid], workers[wid]) for jid, wids in d.claims.items() for wid in wids]
    for j, w in homes:
        assert w.schedulable
        assert j.preemptible or not w.spot
        assert j.pool is None or j.pool == w.pool
        assert j.gpu == 0 or j.gpu_type is None or j.gpu_type == w.gpu_type
        assert not j.require_region or j.region == w.region
    # no worker over-allocated: running jobs still hold what they hold this cycle
    for w in s.workers:
        mine = [r for r in s.running if r.worker_id == w.id]
        new = [p for p in d.placements if p.worker_id == w.id]
        assert sum(r.cpu for r in mine) + sum(jobs[p.job_id].cpu for p in new) <= w.cpu + 1e-6
        assert sum(r.memory for r in mine) + sum(jobs[p.job_id].memory for p in new) <= w.memory
        gpus = [g for r in mine for g in r.gpu_indices] + [g for p in new for g in p.gpu_indices]
        assert len(gpus) == len(set(gpus)) and all(0 <= g < w.gpu for g in gpus)
    # quotas: a team that is given anything stays within every quota, counting what it already runs
    for t in s.teams:
        q = t.quota
        got = [jobs[p.job_id] for p in d.placements if jobs[p.job_id].team == t.name]
        got += [jobs[jid] for jid, wids in d.claims.items() if jobs[jid].team == t.name for _ in wids]
        if q is None or not got:
            continue
        runs = [r for r in s.running if r.team == t.name]
        gpu = sum(r.gpu for r in runs) + sum(j.gpu for j in got)
        cpu = sum(r.cpu for r in runs) + sum(j.cpu for j in got)
        mem = sum(r.memory for r in runs) + sum(j.memory for j in got)
        assert q.gpu is None or gpu <= q.gpu or all(j.gpu == 0 for j in got)
        assert q.cpu is None or cpu <= q.cpu + 1e-6
        assert q.memory is None or mem <= q.memory
        for gtype, limit in q.gpu_by_type.items():
            mine = [p for p in d.placements if jobs[p.job_id].team == t.name and jobs[p.job_id].gpu]
            if any(workers[p.worker_id].gpu_type == gtype for p in mine):
                typed = sum(r.gpu for r in runs if workers[r.worker_id].gpu_type == gtype)
                typed += sum(jobs[p.job_id].gpu for p in mine if workers[p.worker_id].gpu_type == gtype)
                assert typed <= limit
    # preemptions only of preemptible running jobs, each for a job that now holds a claim
    running_ids = {r.id: r for r in s.running}
    for pre in d.preemptions:
        victim = running_ids[pre.job_id]
        assert victim.preemptible and not victim.terminating
        assert pre.for_job in d.claims
    assert len({p.job_id for p in d.preemptions}) == len(d.preemptions)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_decisions_respect_capacity_constraints_quotas_and_gangs(s: Snapshot) -> None:
    check(s, decide(s))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(), st.randoms(use_true_random=False))
def test_same_snapshot_same_decisions(s: Snapshot, rng: random.Random) -> None:
    shuffled = replace(
        s,
        workers=tuple(rng.sample(s.workers, len(s.workers))),
        pending=tuple(rng.sample(s.pending, len(s.pending))),
        running=tuple(rng.sample(s.running, len(s.running))),
        teams=tuple(rng.sample(s.teams, len(s.teams))),
    )
    assert decide(s) == decide(shuffled)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_every_placeable_job_is_eventually_placed(s: Snapshot) -> None:
    """Run cycles while running jobs finish at their bound: nothing that can ever run waits forever.

    Preempted jobs go back to the queue once stopped, as the leader requeues them.
    """
    never = {jid for jid, code in decide(s).reason_codes.items() if code == "never-fits"}
    jobs = {p.id: p for p in s.pending}
    pending = dict(jobs)
    running = list(s.running)
    now = s.now
    for _ in range(300):
        cur = replace(s, now=now, pending=tuple(pending.values()), running=tuple(running))
        d = decide(cur)
        check(cur, d)
        # Which check reports "never" first can depend on current use; the fact itself does not.
        never |= {jid for jid, code in d.reason_codes.items() if code == "never-fits"}
        for jid, wids in d.claims.items():
            pending[jid] = replace(pending[jid], claimed_workers=wids)  # the leader keeps claims
        for p in d.placements:
            j = jobs[p.job_id]
            pending.pop(j.id, None)
            running.append(
                RunningJob(
                    j.id,
                    j.team,
                    p.worker_id,
                    priority=j.priority,
                    cpu=j.cpu,
                    memory=j.memory,
                    gpu=j.gpu,
                    gpu_indices=p.gpu_indices,
                    preemptible=j.preemptible,
                    started_at=now,
                    max_runtime_s=j.max_runtime_s,
                    replica=p.rank,
                )
            )
        victims = {p.job_id for p in d.preemptions}
        running = [replace(r, terminating=True) if r.id in victims else r for r in running]
        if set(pending) <= never:
            return
        # The clock jumps to the next end; a stopping job ends a second later.
        ends = [now + 1 if r.terminating else max(r.started_at + r.max_runtime_s, now + 1) for r in running]
        now = min(ends, default=now + 1)
        for r, end in zip(running, ends, strict=True):
            if end <= now and r.terminating and r.id in jobs:
                pending[r.id] = jobs[r.id]
        running = [r for r, end in zip(running, ends, strict=True) if end > now]
    raise AssertionError(
        f"still waiting after 300 cycles: {[(j, d.reasons.get(j)) for j in sorted(set(pending) - never)]}"
    )
