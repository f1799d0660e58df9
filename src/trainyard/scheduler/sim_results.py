"""What a simulated day reports (its config, per-group statistics, time series and result) and the
small measures it is made of (percentiles, Jain's index, weighted max-min entitlements)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trainyard.model.pricing import Cost, Prices
from trainyard.scheduler.snapshot import (
    SchedulerConfig,
)

EPS = 1e-6


class SimulationError(RuntimeError):
    """The policy broke an invariant the platform enforces (over-allocation, a half gang, ...)."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How a simulation runs: cycle spacing, the scheduler's config, and what the report samples."""

    cycle_s: float = 60.0
    """Least simulated time between two scheduler cycles. Slurm's main loop runs every 60 s
    (``sched_interval``) besides its event-triggered passes; here a cycle is event-triggered but
    never closer than this, which bounds a 100k-job day to ~1,440 ``decide`` calls."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sample_s: float = 300.0
    """Resolution of the queue-depth and share time series."""
    fairness_window_s: float = 3600.0
    backlog_fraction: float = 0.5
    backlog_wait_s: float = 300.0
    max_time_s: float = 30 * 86400.0
    """Hard stop for a workload without a horizon whose queue never drains."""
    prices: Prices | None = None
    """What each attempt costs (``model/pricing.py``): every replica's running time within the run,
    preempted work and grace periods included, at its worker's GPU type and spot. None: no costs."""


@dataclass(frozen=True, slots=True)
class GroupStats:
    """Outcomes for one team, one priority, or everyone."""

    name: str
    jobs: int
    """Jobs submitted within the run (work carried over from before t=0 is not counted here)."""
    started: int
    finished: int
    timed_out: int
    wait_p50_s: float | None
    wait_p95_s: float | None
    wait_p99_s: float | None
    """Submission to first start; a job that never started counts with its wait so far, so a
    policy cannot look better by starving jobs past the end of the run."""
    never_started: int
    gpu_hours: float
    """GPU-hours held (running or stopping) within the run."""
    gpu_share: float
    """gpu_hours over the fleet's available GPU-hours."""
    preemptions: int
    """Attempts stopped by the policy or by a spot reclaim."""
    gpu_hours_lost: float
    """GPU time since the victim's last checkpoint (grace period included) that was thrown away."""
    weight: float | None = None
    cost: Cost = field(default_factory=Cost)
    """What the group's attempts cost within the run at ``SimConfig.prices`` (zero without)."""


@dataclass(frozen=True, slots=True)
class Series:
    """State sampled every ``sample_s``, for plots."""

    t: tuple[float, ...]
    queue_depth: tuple[int, ...]
    running: tuple[int, ...]
    utilization: tuple[float, ...]
    """Allocated GPUs over available GPUs at each sample."""
    share: Mapping[str, tuple[float, ...]]
    """Each team's GPUs over the available GPUs at each sample."""


@dataclass(frozen=True, slots=True)
class SimResult:
    """One policy's run over one workload: per-group waits, utilization, fairness and time series."""

    policy: str
    workload: str
    end_s: float
    cycles: int
    events: int
    overall: GroupStats
    teams: tuple[GroupStats, ...]
    priorities: tuple[GroupStats, ...]
    gpu_utilization: float
    """GPU-seconds allocated over GPU-seconds of workers present, over [0, end_s]."""
    jain_index: float | None
    """Mean over fairness windows; ``None`` when no window had two backlogged teams."""
    jain_windows: int
    preemptions_by_reason: Mapping[str, int]
    mean_running: float
    """Time-averaged running jobs (a gang counts once)."""
    max_queue_depth: int
    """Most jobs pending at once from t=0 on."""
    series: Series
    policy_s: float = 0.0
    """Seconds spent in the policy, when a ``timer`` was given; else 0."""
    worker_hours: float = 0.0
    """Hours of workers present (booting ones included) within [0, end_s]: what the fleet cost."""
    workers_started: int = 0
    """Workers an autoscaler started (:mod:`trainyard.scheduler.autoscale`); 0 for a fixed fleet."""


# --- helpers that are public because the tests check them on known inputs ------------------------


def percentile(sorted_xs: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending sequence; ``None`` if empty."""
    if not sorted_xs:
        return None
    return sorted_xs[min(len(sorted_xs) - 1, max(0, math.ceil(q / 100 * len(sorted_xs)) - 1))]


def jain_index(xs: Sequence[float]) -> float:
    """(Σx)² / (n·Σx²): 1 when all equal, 1/n when one has everything."""
    if not xs:
        raise ValueError("Jain's index of nothing")
    sq = sum(x * x for x in xs)
    if sq == 0:
        return 1.0
    return sum(xs) ** 2 / (len(xs) * sq)


def entitlements(
    available: float, weights: Mapping[str, float], caps: Mapping[str, float]
) -> dict[str, float]:
    """Weighted max-min split of ``available`` (water-filling): shares ∝ weight, a team capped at
    ``caps`` (when given) and what it cannot take redistributed to the rest."""
    out = dict.fromkeys(weights, 0.0)
    left = max(available, 0.0)
    open_ = {n for n, w in weights.items() if w > 0}
    while open_ and left > EPS:
        total = sum(weights[n] for n in open_)
        capped = [n for n in open_ if n in caps and out[n] + left * weights[n] / total >= caps[n] - EPS]
        if not capped:
            for n in open_:
                out[n] += left * weights[n] / total
            break
        for n in capped:
            left -= caps[n] - out[n]
            out[n] = caps[n]
            open_.discard(n)
    return out
