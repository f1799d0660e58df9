"""A cycle charges the running jobs per worker, in locals, and only the teams with per-type quotas
get GPUs by type; its state must be what charging one replica at a time, in the running order,
gives (the plain loop below is the one it replaced)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from trainyard.scheduler.capacity import WorkerState
from trainyard.scheduler.cycle import Cycle, _by_id, _by_replica, _by_worker_id, _sorted_by
from trainyard.scheduler.snapshot import RunningJob, Snapshot
from trainyard.scheduler.synthetic import snapshot


def _plain_charge(cycle: Cycle) -> dict[str, list[RunningJob]]:
    """The per-replica loop: every team's usage and GPUs by type, every worker's state."""
    gangs: dict[str, list[RunningJob]] = {}
    teams, hosts, gpu_type_of = cycle.teams, cycle.fleet.workers, cycle.fleet.gpu_type_of
    draining = cycle.fleet.draining
    used_gpus: dict[str, set[int]] = {}
    for r in _sorted_by(cycle.snapshot.running, _by_id, _by_replica, _by_worker_id):
        rid, wid = r.id, r.worker_id
        gangs.setdefault(rid, []).append(r)
        cpu, mem, gpu = r.cpu, r.memory, r.gpu
        team = teams[r.team]
        team.usage[0] += cpu
        team.usage[1] += mem
        team.usage[2] += gpu
        if gpu:
            gpu_type = gpu_type_of.get(wid)
            if gpu_type:
                team.gpus_by_type[gpu_type] = team.gpus_by_type.get(gpu_type, 0) + gpu
        host = hosts.get(wid)
        if host is None:
            continue
        host.holders.append(r)
        host.free_cpu -= cpu
        host.free_memory -= mem
        taken: list[int] | tuple[int, ...] = r.gpu_indices
        if gpu and not taken:
            taken = [g for g in host.free_gpus if g not in used_gpus.get(wid, ())][:gpu]
        if taken:
            used_gpus.setdefault(wid, set()).update(taken)
        if r.terminating:
            host.draining_cpu += cpu
            host.draining_memory += mem
            host.draining_gpus.extend(sorted(taken))
            draining[wid] = None
        elif r.preemptible:
            frees = host.victim_frees.get(rid)
            if frees is None:
                host.victims.append(r)
                host.victim_frees[rid] = [cpu, mem, gpu]
            else:
                frees[0] += cpu
                frees[1] += mem
                frees[2] += gpu
            for i, v in enumerate((cpu, mem, gpu)):
                host.victims_total[i] += v
    for wid, used in used_gpus.items():
        hosts[wid].free_gpus = [g for g in hosts[wid].free_gpus if g not in used]
    return gangs


def _host_state(h: WorkerState) -> tuple[object, ...]:
    return (
        h.free_cpu,
        h.free_memory,
        h.free_gpus,
        h.draining_cpu,
        h.draining_memory,
        h.draining_gpus,
        [id(r) for r in h.holders],
        [id(r) for r in h.victims],
        h.victim_frees,
        h.victims_total,
    )


def _varied(seed: int) -> Snapshot:
    """A synthetic snapshot with gangs, replicas without GPU indices, stopping jobs, lost workers."""
    s = snapshot(300, 60, seed=seed, load=0.7)
    rng = random.Random(seed)
    running = []
    for r in s.running:
        roll = rng.random()
        if roll < 0.1:
            r = replace(r, terminating=True)
        elif roll < 0.2:
            r = replace(r, gpu_indices=())
        elif roll < 0.25:
            r = replace(r, worker_id="lost-worker")
        running.append(r)
    # Gangs: a few jobs take the id of another, as further replicas.
    for i in range(0, len(running) - 1, 9):
        running[i + 1] = replace(running[i + 1], id=running[i].id, replica=running[i].replica + 1)
    rng.shuffle(running)
    return replace(s, running=tuple(running))


@pytest.mark.parametrize("seed", range(8))
def test_charging_per_worker_matches_the_per_replica_loop(seed: int) -> None:
    s = _varied(seed)
    fast = Cycle(s)
    # A cycle with nothing running, then charged the plain way.
    plain_cycle = Cycle(replace(s, running=()))
    plain_cycle.snapshot = s
    gangs = _plain_charge(plain_cycle)
    for name, team in fast.teams.items():
        other = plain_cycle.teams[name]
        assert team.usage == other.usage
        quota = team.team.quota
        if quota is not None and quota.gpu_by_type:
            assert team.gpus_by_type == other.gpus_by_type
    assert list(fast.fleet.draining) == list(plain_cycle.fleet.draining)
    for wid, host in fast.fleet.workers.items():
        assert _host_state(host) == _host_state(plain_cycle.fleet.workers[wid]), wid
    fast.preemptor._weigh_victims()
    # The cycle's gangs are cut from the sorted running replicas as asked for (victims' only).
    assert {k: [id(r) for r in fast.preemptor.gangs[k]] for k in gangs} == {
        k: [id(r) for r in v] for k, v in gangs.items()
    }


def test_a_fleet_built_from_the_last_layout_is_the_one_built_afresh() -> None:
    from tests.unit.scheduler.test_decide_equivalence import digest
    from trainyard.scheduler.core import decide
    from trainyard.scheduler.layout import _last_layout

    a, b = _varied(1), _varied(2)
    b = replace(
        b, workers=tuple(replace(w, schedulable=False) if i % 7 == 0 else w for i, w in enumerate(b.workers))
    )
    fresh = []
    for s in (a, b):
        _last_layout.clear()
        fresh.append(digest(decide(s)))
    # Each twice in a row (the second from the kept layout), and after the other's.
    assert [digest(decide(s)) for s in (a, a, b, b, a)] == [fresh[0], fresh[0], fresh[1], fresh[1], fresh[0]]
