"""Scheduler v2: one pure decision over a snapshot (fair share, quotas, preemption, gangs, backfill).

``decide(snapshot)`` reads nothing but its argument, so the leader loop, the ETA estimator, the
simulator and the tests all run the same code, and the same snapshot always gives the same
decisions (every sort has an explicit tie-breaker; dicts are filled in sorted order).

One cycle, in the spirit of armada's scheduling round:

1. Each team's pending jobs form a queue ordered by effective priority (declared rank raised one
   step per ``aging_s_per_priority_step`` waited, up to ``aging_cap``), then age, then id.
2. Teams take turns by weighted DRF: the team with the lowest (share + history) / fair share goes
   next, so placing a job raises its team's cost and hands the turn on (progressive filling).
3. A job first passes its team's quota, then is placed on free capacity by best fit with soft costs
   (region, spot, cached data). A gang places all replicas or none.
4. A job that does not fit may preempt: high/urgent jobs evict preemptible lower-priority jobs, and an
   under-share team evicts preemptible jobs of over-share teams. Victims are found by simulating
   their removal, so nobody is evicted unless the job then fits. The job is not placed in the same
   cycle: the victims still hold the GPUs through their grace period, so the freed capacity is
   *claimed* for the job instead, and the job is placed once the victims are gone.
5. The first blocked jobs get an EASY reservation: the workers where they start earliest (running
   jobs assumed to run to ``max_runtime``) are held from that time, and a later job may use them
   only if it ends before then or fits in what the reservation leaves over.

Work is kept near-linear in the number of pending jobs: workers are bucketed per constraint group
by (free GPUs, free-cpu octave) so best fit is a few dict lookups, a job shape that failed is not
searched again in the cycle (capacity only shrinks within a cycle), and the O(workers) victim and
reservation searches run for a bounded number of jobs per cycle.

The constant factor matters too (a cycle with 10,000 pending jobs on 2,000 workers should take a
fraction of a second; ``bench/scheduler.py`` measures it), so the hot paths are written for it:

* Everything jobs of one demand shape share is worked out once per cycle (``JobShape``: the groups
  it may use, whether it can ever fit, its "waiting for capacity" text), and a shape that fits on
  no worker even ignoring reservations is marked ``fits_nowhere`` so later jobs skip the search.
* Per-worker and per-team state is plain floats and lists, updated in place; the frozen
  ``ResourceVector`` appears only in the returned shares.
* A team's fair-share cost is recomputed only when its usage changed; the victim search skips
  workers whose cheapest victim cannot beat the best found, and the reservation search stops
  following a worker once it cannot start before the ones already chosen. When a second blocked job
  of one demand comes with no worker's holds changed since the first (``Fleet.timeline_version``),
  every worker is ranked by earliest start once, and later ones of that demand take the first
  unreserved workers of the ranking (the leader's queue of jobs that fit nowhere made eight full
  scans of 2,000 workers a cycle).
* The cycle's objects form no reference cycles, so ``decide`` pauses the cyclic garbage collector
  while it runs (a full collection walks the whole snapshot) and refcounting frees everything.

None of this changes a decision: ``tests/unit/scheduler/test_decide_equivalence.py`` pins the
decisions on a spread of snapshots.

Where each part lives (this module keeps the public names, so callers import from here):

* :mod:`.cycle`: :func:`decide`, the queues and the fair-share turns (steps 1-2), and each job's
  visit through the checks below, in order.
* :mod:`.capacity`: each worker's free capacity, the best-fit buckets (step 3), placing and claiming.
* :mod:`.teams`: each team's usage, fair-share cost (step 2) and quota checks (step 3).
* :mod:`.preemption`: victim search, draining capacity and claims (step 4).
* :mod:`.reservations`: EASY reservations and the backfill rule (step 5).
* :mod:`.reasons`: the texts that say why a job waits.
* :mod:`.decisions`: the result types; :mod:`.undo`: the undo log behind all-or-nothing attempts.
"""

from __future__ import annotations

from trainyard.scheduler.capacity import EPS, groups_key
from trainyard.scheduler.cycle import decide, effective_priority
from trainyard.scheduler.decisions import (
    Decisions,
    Placement,
    Preemption,
    PreemptReason,
    ReasonCode,
    Reservation,
)

__all__ = [
    "EPS",
    "Decisions",
    "Placement",
    "PreemptReason",
    "Preemption",
    "ReasonCode",
    "Reservation",
    "decide",
    "effective_priority",
    "groups_key",
]
