"""The shortcuts the scheduler takes for speed give what the plain code they replace gives.

``test_decide_equivalence`` pins whole decisions; these pin each shortcut on its own, on inputs
chosen to reach the cases the synthetic snapshots rarely do (ties, gangs, NaN-free random times).
"""

from __future__ import annotations

import dataclasses
import random
from bisect import bisect_left

import pytest

from trainyard.scheduler.capacity import OCTAVE_OFFSET, OCTAVE_SLOTS, Fleet, WorkerState, cpu_octave
from trainyard.scheduler.cycle import _by_id, _by_replica, _by_worker_id, _sorted_by
from trainyard.scheduler.decisions import Placement, placement
from trainyard.scheduler.snapshot import GIB, PendingJob, RunningJob, SchedulerConfig
from trainyard.scheduler.synthetic import fleet as synthetic_fleet
from trainyard.scheduler.undo import UndoLog


def test_placement_builds_the_same_frozen_object_as_the_constructor() -> None:
    quick = placement("j", "w", (0, 3), 1, 2, 4, True)
    plain = Placement("j", "w", (0, 3), 1, 2, 4, True)
    assert quick == plain and hash(quick) == hash(plain) and repr(quick) == repr(plain)
    assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.rank = 0  # type: ignore[misc]


@pytest.mark.parametrize("seed", range(20))
def test_sorted_by_matches_stable_sorts_least_significant_first(seed: int) -> None:
    rng = random.Random(seed)
    # Few distinct ids and workers in some seeds (ties: gangs), all distinct in others.
    n_ids = rng.choice((3, 50, 1000))
    running = tuple(
        RunningJob(f"r{rng.randrange(n_ids)}", "t", f"w{rng.randrange(20)}", replica=rng.randrange(3))
        for _ in range(rng.randrange(0, 60))
    )
    expected = sorted(running, key=_by_worker_id)
    expected.sort(key=_by_replica)
    expected.sort(key=_by_id)
    got = _sorted_by(running, _by_id, _by_replica, _by_worker_id)
    assert [id(r) for r in got] == [id(r) for r in expected]


@pytest.mark.parametrize("seed", range(20))
def test_sorted_by_matches_stable_sorts_on_float_ties_and_nan(seed: int) -> None:
    rng = random.Random(seed)
    times = [0.0, -0.0, 1.5, 2.0, float("nan"), float("inf")] if seed % 4 == 0 else [0.0, -0.0, 1.5, 2.0]
    pending = tuple(
        PendingJob(f"p{rng.randrange(30)}", "t", queued_at=rng.choice(times))
        for _ in range(rng.randrange(0, 60))
    )
    by_queued_at, by_id = (lambda p: p.queued_at), (lambda p: p.id)
    expected = sorted(pending, key=by_id)
    expected.sort(key=by_queued_at)
    got = _sorted_by(pending, by_queued_at, by_id)
    assert [id(p) for p in got] == [id(p) for p in expected]


def _reference_first_fit(
    fleet: Fleet,
    group_buckets: list[int],
    buckets: dict[int, dict[str, None]],
    among: set[str],
    job: PendingJob,
) -> WorkerState | None:
    """What a bucket index over ``among`` alone would find: the group's index, filtered."""
    octave_key = cpu_octave(job.cpu) + OCTAVE_OFFSET
    start_key = job.gpu * OCTAVE_SLOTS + octave_key
    for key in group_buckets[bisect_left(group_buckets, start_key) :]:
        if key % OCTAVE_SLOTS < octave_key:
            continue
        for wid in buckets[key]:
            host = fleet.workers[wid]
            if wid in among and host.free_memory >= job.memory and host.free_cpu + 1e-9 >= job.cpu:
                return host
    return None


@pytest.mark.parametrize("seed", range(5))
def test_search_among_a_uris_workers_finds_what_a_bucket_index_over_them_would(seed: int) -> None:
    rng = random.Random(seed)
    fleet = Fleet(tuple(synthetic_fleet(120, rng)), SchedulerConfig(), 0.0, UndoLog())
    fleet.index_all()
    hosts = list(fleet.workers.values())
    checked = 0
    for step in range(400):
        gpu = rng.choice((0, 0, 1, 2, 4))
        job = PendingJob(
            f"j{step}", "t", cpu=float(rng.choice((1, 2, 4, 8))), memory=rng.choice((4, 64)) * GIB, gpu=gpu
        )
        for group in fleet.groups:
            everyone = {h.worker.id for h in group.members}
            first = _reference_first_fit(fleet, group.buckets.keys, group.buckets.buckets, everyone, job)
            for uri, caching in group.cached.items():
                octave_key = cpu_octave(job.cpu) + OCTAVE_OFFSET
                start_key = job.gpu * OCTAVE_SLOTS + octave_key
                got = fleet._first_fit_among(caching, job, start_key << 32, octave_key, False)
                # Every member caching the URI, those taken off the list (in no bucket) included.
                among = {h.worker.id for h in group.members if uri in h.worker.cached_uris}
                assert {h.worker.id for h in caching} <= among
                want = _reference_first_fit(fleet, group.buckets.keys, group.buckets.buckets, among, job)
                assert got is want, (uri, step)
                checked += want is not None
                if first is not None and uri not in first.worker.cached_uris:
                    # As best fit searches: from just past the group's own first fit.
                    after = fleet._first_fit_among(caching, job, first.order + 1, octave_key, False)
                    assert after is want, (uri, step)
        # Move workers around as a cycle does (placements that fit), so buckets fill and reorder.
        host = rng.choice(hosts)
        if host.free_cpu >= job.cpu and host.free_memory >= job.memory and len(host.free_gpus) >= gpu:
            fleet.allocate(host, job)
    assert checked > 100


@pytest.mark.parametrize("seed", range(5))
def test_a_worker_leaves_the_caching_lists_when_full_and_comes_back_on_rollback(seed: int) -> None:
    rng = random.Random(seed)
    undo = UndoLog()
    fleet = Fleet(tuple(synthetic_fleet(60, rng)), SchedulerConfig(), 0.0, undo)
    fleet.index_all()

    def listed(host: WorkerState) -> set[str]:
        cached = fleet.group_of[host.worker.id].cached
        return {uri for uri in host.worker.cached_uris if any(h is host for h in cached[uri])}

    hosts = [h for h in fleet.workers.values() if h.worker.cached_uris]
    host = rng.choice(hosts)
    everything = PendingJob("all", "t", cpu=host.free_cpu, memory=int(host.free_memory))
    assert listed(host) == set(host.worker.cached_uris)
    undo.begin()
    fleet.allocate(host, everything)
    assert host.order == -1 and listed(host) == set()
    undo.rollback()
    assert host.order != -1 and listed(host) == set(host.worker.cached_uris)
    for uri in host.worker.cached_uris:  # once each, not twice
        assert sum(h is host for h in fleet.group_of[host.worker.id].cached[uri]) == 1
    fleet.allocate(host, everything)  # committed: it stays off
    assert listed(host) == set()
