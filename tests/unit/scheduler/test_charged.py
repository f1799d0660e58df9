"""The charge kept from cycle to cycle (:mod:`trainyard.scheduler.charged`) must be what charging the
snapshot afresh gives, after any sequence of changes: replicas starting, ending, stopping and
checkpointing (new objects), workers leaving and coming back (a new workers tuple), and the
snapshots it must refuse (a replica listed twice, two replicas tied on (id, replica) on one worker,
an unrelated snapshot). Each step compares a cycle built on the kept charge with one that charges
the full way: every worker's state and bucket, each team's usage, the draining workers, the gangs,
and the decisions."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.scheduler.test_charge_parts import _host_state
from tests.unit.scheduler.test_decide_equivalence import digest
from trainyard.scheduler.charged import RunningCharge
from trainyard.scheduler.cycle import Cycle
from trainyard.scheduler.snapshot import GIB, RunningJob, Snapshot, Worker
from trainyard.scheduler.synthetic import TEAMS, snapshot

EVENTS = (
    "start",
    "start",
    "end",
    "end",
    "stop",
    "checkpoint",
    "checkpoint",
    "leave",
    "back",
    "same",
    "shuffle",
    "inexact",
    "twice",
    "tie",
    "fresh",
    "empty",
)


def _state(c: Cycle) -> tuple[object, ...]:
    fleet = c.fleet
    hosts = {wid: (*_host_state(h), h.bucket_key, h.order, h.worker) for wid, h in fleet.workers.items()}
    index = [
        ([(k, list(v)) for k, v in g.buckets.buckets.items()], list(g.buckets.keys)) for g in fleet.groups
    ]
    teams = {name: (t.usage, t.gpus_by_type) for name, t in c.teams.items()}
    shares = {name: (s.running, s.pending, s.fair_share, s.history_share) for name, s in c.shares.items()}
    c.preemptor._weigh_victims()
    job_ids = sorted({r.id for r in c.snapshot.running})
    gangs = [(rid, [id(r) for r in c.preemptor.gangs[rid]]) for rid in job_ids]
    victims = {wid: [id(v) for v in h.victims] for wid, h in fleet.workers.items()}
    return hosts, index, teams, shares, list(fleet.draining), fleet.moves, gangs, victims


class _World:
    """A fleet's running replicas changed one event at a time, as the simulator changes them."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        base = snapshot(80, 40, seed=seed, load=0.7)
        if seed % 2:
            # No per-type quota: the teams' usage comes from the kept sums (else summed afresh).
            base = replace(base, teams=tuple(replace(t, quota=None) for t in base.teams))
        self.base = base
        self.workers = list(base.workers)
        self.workers_t = base.workers
        """Kept while no worker changes, as the simulator keeps it (the layout with it)."""
        self.running = list(base.running)
        self.now = base.now
        self.n = 0

    def snapshot(self) -> Snapshot:
        if list(self.workers_t) != self.workers:
            self.workers_t = tuple(self.workers)
        return replace(self.base, now=self.now, workers=self.workers_t, running=tuple(self.running))

    def apply(self, event: str) -> None:
        rng, running = self.rng, self.running
        self.now += 30.0
        ids = sorted({r.id for r in running})
        if event == "start" or (event in ("end", "stop", "checkpoint") and not ids):
            self.n += 1
            replicas = rng.choice((1, 1, 2, 3))
            for rank in range(replicas):
                w = rng.choice(self.workers)
                wid = w.id if rng.random() < 0.9 else "lost-worker"
                gpu = rng.choice((0, 1)) if w.gpu else 0
                running.append(
                    RunningJob(
                        f"new-{self.n}",
                        rng.choice(TEAMS),
                        wid,
                        priority=rng.randrange(4),
                        cpu=rng.choice((1.0, 2.0, 0.5)),
                        memory=GIB,
                        gpu=gpu,
                        gpu_indices=(),
                        preemptible=rng.random() < 0.6,
                        started_at=self.now,
                        replica=rank,
                    )
                )
        elif event == "end":
            gone = rng.choice(ids)
            running[:] = [r for r in running if r.id != gone]
        elif event == "stop":
            doomed = rng.choice(ids)
            running[:] = [replace(r, terminating=True) if r.id == doomed else r for r in running]
        elif event == "checkpoint":
            i = rng.randrange(len(running))
            running[i] = replace(running[i], last_checkpoint_at=self.now)
        elif event in ("leave", "back"):
            i = rng.randrange(len(self.workers))
            self.workers[i] = replace(self.workers[i], schedulable=event == "back")
        elif event == "shuffle":
            rng.shuffle(running)
        elif event == "inexact" and running:
            i = rng.randrange(len(running))
            running[i] = replace(running[i], cpu=0.3)
        elif event == "twice" and running:
            running.append(rng.choice(running))
        elif event == "tie" and running:
            r = rng.choice(running)
            running.append(replace(r, cpu=1.0))
        elif event == "empty":
            running.clear()  # everything ended: the next start begins from nothing kept
        elif event == "fresh":
            running[:] = [replace(r) for r in running]

    def repair(self) -> None:
        """Undo the events a snapshot may not keep (a replica listed twice, a tie) after one step."""
        seen: set[int] = set()
        keys: set[tuple[str, int, str]] = set()
        out = []
        for r in self.running:
            key = (r.id, r.replica, r.worker_id)
            if id(r) in seen or key in keys:
                continue
            seen.add(id(r))
            keys.add(key)
            out.append(r)
        self.running[:] = out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.sampled_from(EVENTS), min_size=1, max_size=25))
def test_the_kept_charge_is_the_full_charge_after_any_events(seed: int, events: list[str]) -> None:
    world = _World(seed)
    kept = RunningCharge()
    used = 0
    for event in ["same", *events]:
        world.apply(event)
        s = world.snapshot()
        if kept.update(s):
            used += 1
            assert _state(Cycle(s, kept)) == _state(Cycle(s))
            assert digest(Cycle(s, kept).run()) == digest(Cycle(s).run())
        world.repair()
    if not any(e in ("twice", "tie", "fresh", "empty") for e in events):
        assert used == len(events)  # only the first snapshot is charged the full way


def test_refused_snapshots_and_the_way_back() -> None:
    world = _World(3)
    kept = RunningCharge()
    assert not kept.update(world.snapshot())  # the first: only remembered
    assert kept.update(world.snapshot())  # the same replicas again: kept from now on
    world.apply("twice")
    assert not kept.update(world.snapshot())
    world.repair()
    assert not kept.update(world.snapshot())  # a candidate again
    world.apply("checkpoint")
    assert kept.update(world.snapshot())
    world.apply("tie")
    assert not kept.update(world.snapshot())
    world.repair()
    world.apply("fresh")
    assert not kept.update(world.snapshot())  # unrelated: new objects throughout
    assert kept.update(world.snapshot())
    world.apply("inexact")
    s = world.snapshot()
    assert kept.update(s) and not kept.exact  # 0.3 cores: teams summed the full way
    assert _state(Cycle(s, kept)) == _state(Cycle(s))


def test_exact_sums_only_while_every_partial_sum_is_exact() -> None:
    kept = RunningCharge()
    w = Worker("w", 64, 1 << 40)
    big = [RunningJob(f"j{i}", "a", "w", cpu=1.0, memory=1 << 51) for i in range(5)]
    s = Snapshot(now=0.0, workers=(w,), running=tuple(big))
    kept.update(s)
    assert kept.update(s)
    assert not kept.exact  # 5 * 2**51 memory is past 2**53
    s = replace(s, running=tuple(big[:3]))
    assert kept.update(s) and kept.exact


def test_the_simulators_checkpoint_copy_is_replace() -> None:
    from dataclasses import fields

    from trainyard.scheduler.simulate import checkpointed

    # Every field set away from its default: a field added to RunningJob fails here until
    # checkpointed() copies it too.
    r = RunningJob("j", "t", "w", 3, 1.5, 7, 2, (4, 5), True, 10.0, 20.0, 99.0, 1, True, "arr")
    assert [f.name for f in fields(RunningJob)] == [
        "id", "team", "worker_id", "priority", "cpu", "memory", "gpu", "gpu_indices", "preemptible",
        "started_at", "last_checkpoint_at", "max_runtime_s", "replica", "terminating", "array_id",
    ]  # fmt: skip
    defaults = RunningJob("x", "y", "z")
    assert all(getattr(r, f.name) != getattr(defaults, f.name) for f in fields(RunningJob))
    assert checkpointed(r, 30.0) == replace(r, last_checkpoint_at=30.0)
