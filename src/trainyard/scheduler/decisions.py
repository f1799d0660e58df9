"""What one scheduling cycle decides: placements, preemptions, claims, reservations and reasons.

These are the scheduler's output types. :func:`trainyard.scheduler.core.decide` returns a
:class:`Decisions`; the leader loop turns it into leases and preemptions, the ETA estimator and the
simulator read it, and ``tests/unit/scheduler/test_decide_equivalence.py`` digests it field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainyard.scheduler.fairshare import TeamShare

PreemptReason = Literal["priority", "fair-share reclaim"]
"""Why a running job is preempted: a higher-priority job needs its capacity, or its team is over its
fair share and an under-share team reclaims it."""

ReasonCode = Literal[
    "quota",
    "never-fits",
    "capacity",
    "reserved",
    "preempting",
    "draining",
    "reservation",
    "array-limit",
    "budget",
]
"""Why a pending job waits, as a stable code for metrics and filters (``Decisions.reason_codes``)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """One replica of a pending job started on a worker, on these GPU indices."""

    job_id: str
    worker_id: str
    gpu_indices: tuple[int, ...]
    rank: int = 0
    """Replica rank (``TRAINYARD_RANK``); rank 0's worker is the gang's ``MASTER_ADDR``."""
    world_size: int = 1
    attempt: int = 0
    cross_region: bool = False
    """Placed outside the job's ``data.region`` (the cross-region metric counts these)."""


# A frozen dataclass's __init__ sets each field through object.__setattr__, twice the cost of its
# slots' own setters; a cycle makes one Placement per replica it starts (thousands at 10k pending).
_PLACEMENT_SLOTS = tuple(
    getattr(Placement, name).__set__
    for name in ("job_id", "worker_id", "gpu_indices", "rank", "world_size", "attempt", "cross_region")
)
# Each setter a global of its own, and object.__new__ too: unpacking the tuple (and looking up
# ``object``) on every call was a tenth of the call.
_set0, _set1, _set2, _set3, _set4, _set5, _set6 = _PLACEMENT_SLOTS
_new = object.__new__


def placement(
    job_id: str,
    worker_id: str,
    gpu_indices: tuple[int, ...],
    rank: int,
    world_size: int,
    attempt: int,
    cross_region: bool,
) -> Placement:
    """``Placement(job_id, ...)`` with every field given, built quicker: the same object."""
    p: Placement = _new(Placement)
    _set0(p, job_id)
    _set1(p, worker_id)
    _set2(p, gpu_indices)
    _set3(p, rank)
    _set4(p, world_size)
    _set5(p, attempt)
    _set6(p, cross_region)
    return p


@dataclass(frozen=True, slots=True)
class Preemption:
    """A running job (every replica of a gang) told to stop so that a pending job can start."""

    job_id: str
    worker_ids: tuple[str, ...]
    reason: PreemptReason
    for_job: str
    """The pending job the freed capacity is claimed for."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """Workers held for a blocked job from the time it is expected to start (EASY backfill)."""

    job_id: str
    worker_ids: tuple[str, ...]
    start_at: float
    """Latest time the reserved job is expected to start, from running jobs' ``max_runtime``."""


@dataclass
class Decisions:
    """Everything one cycle decided, and why each pending job that did not start waits."""

    placements: list[Placement] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    """Why each unplaced pending job waits, in words for ``yard get`` and the API."""
    reason_codes: dict[str, ReasonCode] = field(default_factory=dict)
    """The same, as a stable code for metrics and filters."""
    queue_position: dict[str, int] = field(default_factory=dict)
    """1-based position of each pending job in its team's queue."""
    order: list[str] = field(default_factory=list)
    """Pending job ids in the order this cycle considered them (the global queue)."""
    reservations: list[Reservation] = field(default_factory=list)
    claims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Workers whose capacity is held for a job while the jobs preempted for it stop."""
    shares: dict[str, TeamShare] = field(default_factory=dict)
    cross_region: int = 0
