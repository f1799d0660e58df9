"""Honest start-time estimates: run the real scheduler forward on a simulated clock.

Every running job is assumed to run to its ``max_runtime`` (the only bound the platform can vouch
for), each step jumps the clock to the next such end, and :func:`~trainyard.scheduler.core.decide`
places what then fits, so the estimate follows every policy (fair share, quotas, reservations,
gangs) without a second model of them to keep in step. Jobs usually end early, so an estimate is
a latest-start bound rather than a forecast; jobs submitted later are not foreseen.

The work is bounded: only the first ``max_jobs`` jobs of the current global order are simulated and
the clock advances at most ``max_steps`` times; jobs beyond either get ``None`` ("not within the
horizon") rather than a made-up time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from trainyard.scheduler.core import Decisions, decide
from trainyard.scheduler.snapshot import PendingJob, RunningJob, Snapshot


@dataclass(frozen=True, slots=True)
class Estimates:
    """What :func:`estimate_starts` found: a latest start per pending job, and how far it looked."""

    start_at: dict[str, float | None]
    """Estimated latest start per pending job; ``None`` when beyond the simulated horizon."""
    horizon: float
    """The simulated clock when the estimate stopped: jobs without an estimate start after it."""
    steps: int


def estimate_starts(
    snapshot: Snapshot,
    *,
    max_steps: int = 32,
    max_jobs: int = 2000,
    min_step_s: float = 300.0,
    first: Decisions | None = None,
) -> Estimates:
    """Latest start per pending job. Each step costs one ``decide``; ``min_step_s`` coalesces job
    ends that fall close together into one step, rounding estimates up (never down) by at most it.
    ``first``: the decisions already taken on ``snapshot`` (the leader's cycle), saving one run."""
    now = snapshot.now
    if first is None:
        first = decide(snapshot)
    start: dict[str, float | None] = {p.id: None for p in snapshot.pending}
    grace = snapshot.config.termination_grace_s
    ends: dict[tuple[str, int], float] = {}
    for r in snapshot.running:
        ends[(r.id, r.replica)] = now + grace if r.terminating else r.started_at + r.max_runtime_s
    pending, running = _apply(first, now, list(snapshot.pending), list(snapshot.running), ends, start, grace)
    considered = set(first.order[:max_jobs])
    pending = [p for p in pending if p.id in considered]
    t = now
    steps = 0
    while pending and steps < max_steps:
        later = [e for e in ends.values() if e > t]
        if not later:
            break  # nothing will ever free up: the rest cannot start
        t = max(min(later), t + min_step_s)
        running = [r for r in running if ends[(r.id, r.replica)] > t]
        steps += 1
        decisions = decide(replace(snapshot, now=t, pending=tuple(pending), running=tuple(running)))
        pending, running = _apply(decisions, t, pending, running, ends, start, grace)
    return Estimates(start, t, steps)


def _apply(
    decisions: Decisions,
    t: float,
    pending: list[PendingJob],
    running: list[RunningJob],
    ends: dict[tuple[str, int], float],
    start: dict[str, float | None],
    grace: float,
) -> tuple[list[PendingJob], list[RunningJob]]:
    """Turn one cycle's placements into running jobs and its preemptions into terminating ones."""
    by_id = {p.id: p for p in pending}
    placed: set[str] = set()
    out = list(running)
    for pl in decisions.placements:
        job = by_id[pl.job_id]
        placed.add(job.id)
        start[job.id] = t
        ends[(job.id, pl.rank)] = t + job.max_runtime_s
        out.append(
            RunningJob(
                job.id,
                job.team,
                pl.worker_id,
                priority=job.priority,
                cpu=job.cpu,
                memory=job.memory,
                gpu=job.gpu,
                gpu_indices=pl.gpu_indices,
                preemptible=job.preemptible,
                started_at=t,
                last_checkpoint_at=None,
                max_runtime_s=job.max_runtime_s,
                replica=pl.rank,
                array_id=job.array_id,
            )
        )
    victims = {p.job_id for p in decisions.preemptions}
    if victims:
        for i, r in enumerate(out):
            if r.id in victims and not r.terminating:
                out[i] = replace(r, terminating=True)
                ends[(r.id, r.replica)] = t + grace
    return [p for p in pending if p.id not in placed], out
