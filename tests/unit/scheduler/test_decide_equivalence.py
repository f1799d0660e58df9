"""Regression guard for the scheduler's speed work: ``decide`` must keep making exactly the same
decisions on a spread of synthetic snapshots.

Each case's expectation is a digest of everything ``decide`` returns (placements and preemptions in
order, reasons, codes, queue positions, the global order, reservations, claims, shares with their
exact floats, the cross-region count), frozen from the scheduler before it was optimised, with two
bugs fixed that the comparison brought out: a memo keyed by the ``id()`` of a short-lived list
(another list could get the id, and with it the first one's groups), and a constraint key that could
not tell "requires region None" from "requires no region". Both let jobs land outside their pool,
GPU type or region, so each case also checks the invariants of ``test_properties``, which the old
decisions broke on most of these snapshots. A change that alters any decision, however small,
changes the digest; the counts next to it say roughly what moved. If a decision is changed on
purpose, regenerate with ``digest(decide(case_snapshot(*case)))`` and say why in the commit.
"""

from __future__ import annotations

import gc
import hashlib
import random
from dataclasses import astuple, replace

import pytest

from tests.unit.scheduler.helpers import decide_on, job, node, where
from tests.unit.scheduler.test_properties import check
from trainyard.scheduler.core import Decisions, decide
from trainyard.scheduler.snapshot import SchedulerConfig, Snapshot
from trainyard.scheduler.synthetic import snapshot


def case_snapshot(n_pending: int, n_workers: int, seed: int, load: float, kind: str) -> Snapshot:
    """A synthetic snapshot, optionally reshaped to reach the rarer paths."""
    s = snapshot(n_pending, n_workers, seed=seed, load=load)
    rng = random.Random(seed * 1000 + 17)
    if kind == "plain":
        return s
    if kind == "drain":
        # Some running jobs already stopping, some pending jobs holding claims from a past cycle.
        running = tuple(replace(r, terminating=True) if rng.random() < 0.08 else r for r in s.running)
        ids = [w.id for w in s.workers]
        pending = tuple(
            replace(p, claimed_workers=(rng.choice(ids),)) if rng.random() < 0.02 else p for p in s.pending
        )
        return replace(s, running=running, pending=pending)
    if kind == "config":
        # No aging, bigger preemption and reservation budgets, late reservations, lost workers.
        config = SchedulerConfig(
            aging_s_per_priority_step=0.0,
            max_preemptions_per_cycle=100,
            max_preemption_attempts_per_cycle=60,
            max_reservations=20,
            reserve_after_s=3000.0,
            fair_share_reclaim=rng.random() < 0.5,
            history_weight=0.0,
        )
        workers = tuple(replace(w, schedulable=False) if rng.random() < 0.05 else w for w in s.workers)
        return replace(s, config=config, workers=workers)
    raise ValueError(kind)


def digest(d: Decisions) -> str:
    canonical = (
        [astuple(p) for p in d.placements],
        [astuple(p) for p in d.preemptions],
        list(d.reasons.items()),
        list(d.reason_codes.items()),
        list(d.queue_position.items()),
        d.order,
        [astuple(r) for r in d.reservations],
        list(d.claims.items()),
        [(name, astuple(share)) for name, share in d.shares.items()],
        d.cross_region,
    )
    return hashlib.sha256(repr(canonical).encode()).hexdigest()[:20]


def counts(d: Decisions) -> tuple[int, int, int, int]:
    return (len(d.placements), len(d.preemptions), len(d.reservations), len(d.reasons))


# (n_pending, n_workers, seed, load, kind) -> (digest, counts), from the pre-optimisation scheduler
# with the two fixes above. Regenerated once since, for reason texts alone: a reservation's time is a
# UTC clock time ("by 04:47 UTC"), no longer "now+3600s" (the old texts give the old digests).
CASES: dict[tuple[int, int, int, float, str], tuple[str, tuple[int, int, int, int]]] = {
    (300, 60, 1, 0.6, "plain"): ("2d5976997f0b06d9a79d", (204, 4, 8, 96)),
    (1500, 200, 2, 0.9, "plain"): ("c4fc5b16e99589253f68", (548, 9, 8, 952)),
    (800, 120, 3, 0.3, "plain"): ("2b32a7ebe97aa296c50d", (473, 5, 8, 329)),
    (600, 40, 4, 1.0, "plain"): ("7ed7404aa1ea168328e7", (144, 9, 8, 456)),
    (2500, 300, 7, 0.6, "plain"): ("e617573df9fe8051f8e3", (1244, 13, 8, 1256)),
    (1000, 150, 5, 0.6, "drain"): ("1d317c850555a68c9bcf", (556, 12, 8, 444)),
    (400, 30, 8, 0.95, "drain"): ("38bffb0d38bdcb270275", (112, 12, 8, 288)),
    (700, 80, 6, 0.5, "config"): ("69c57f14e41bb750955a", (357, 5, 20, 343)),
    (1200, 100, 9, 0.8, "config"): ("770c73897ef19d5f8065", (406, 41, 20, 794)),
}


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: "-".join(map(str, c)))
def test_decisions_match_the_frozen_digest(case: tuple[int, int, int, float, str]) -> None:
    s = case_snapshot(*case)
    d = decide(s)
    check(s, d)  # the invariants of test_properties hold at this scale too
    assert (digest(d), counts(d)) == CASES[case]


def test_a_job_requiring_region_none_does_not_constrain_jobs_that_require_nothing() -> None:
    """A job requiring region None (only region-less workers) and one requiring no region once
    shared a cache key, so whichever came first decided the workers both could use."""
    workers = [node("w-east", region="east")]
    d = decide_on(workers, [job("strict", prio=2, region=None, require_region=True), job("free")])
    assert d.reason_codes["strict"] == "never-fits"
    assert where(d) == {"free": "w-east"}
    d = decide_on(workers, [job("free", prio=2), job("strict", region=None, require_region=True)])
    assert d.reason_codes["strict"] == "never-fits"
    assert where(d) == {"free": "w-east"}


def test_decide_leaves_the_collector_as_it_was_and_nothing_for_it_to_collect() -> None:
    """``decide`` pauses the cyclic collector because it makes no reference cycles: keep it so."""
    s = case_snapshot(400, 30, 8, 0.95, "drain")  # gangs, preemptions and rolled-back attempts
    was = gc.isenabled()
    try:
        gc.collect()
        gc.disable()
        decide(s)
        assert not gc.isenabled()
        assert gc.collect() == 0
        gc.enable()
        decide(s)
        assert gc.isenabled()
    finally:
        if not was:
            gc.disable()
