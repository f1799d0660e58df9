"""A FIFO baseline with the scheduler's shape: ``Snapshot -> Decisions``, pure, for the simulator.

What a plain global job queue does (a Kafka topic, or a batch system with every policy off): jobs
start strictly in the order they entered the queue, each on the first worker it fits, and the first
job that does not fit blocks everyone behind it. No teams, weights or quotas, no priorities, no
preemption, no backfill. It keeps the hard constraints a job states (pool, GPU type, required
region, non-preemptible jobs off spot), because breaking them would be a bug, not a policy. A job
no worker could ever hold is passed over rather than blocking the queue forever, as a real system
would reject it at submission.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trainyard.scheduler.core import Decisions, Placement
from trainyard.scheduler.snapshot import PendingJob, Snapshot, Worker

EPS = 1e-9


@dataclass(slots=True)
class _Free:
    w: Worker
    cpu: float
    mem: float
    gpus: list[int] = field(default_factory=list)


def _allowed(w: Worker, job: PendingJob) -> bool:
    return (
        (job.pool is None or w.pool == job.pool)
        and (job.gpu == 0 or job.gpu_type is None or w.gpu_type == job.gpu_type)
        and (job.preemptible or not w.spot)
        and (not job.require_region or w.region == job.region)
    )


def _fits(f: _Free, job: PendingJob) -> bool:
    return f.cpu + EPS >= job.cpu and f.mem >= job.memory and len(f.gpus) >= job.gpu


def decide_fifo(snapshot: Snapshot) -> Decisions:
    """Place jobs in queue order on the first worker that fits; stop at the first that does not."""
    out = Decisions()
    free: dict[str, _Free] = {}
    for w in sorted(snapshot.workers, key=lambda w: w.id):
        if w.schedulable and w.id not in free:
            free[w.id] = _Free(w, float(w.cpu), float(w.memory), list(range(w.gpu)))
    for r in snapshot.running:
        f = free.get(r.worker_id)
        if f is None:
            continue
        f.cpu -= r.cpu
        f.mem -= r.memory
        if r.gpu:
            taken = set(r.gpu_indices) if r.gpu_indices else set(f.gpus[: r.gpu])
            f.gpus = [g for g in f.gpus if g not in taken]
    workers = list(free.values())
    # "Could it ever fit" depends only on the job's constraints and per-replica shape.
    ever: dict[tuple[object, ...], bool] = {}
    queue = sorted(snapshot.pending, key=lambda j: (j.queued_at, j.id))
    blocked_by: str | None = None
    for pos, job in enumerate(queue, 1):
        out.order.append(job.id)
        out.queue_position[job.id] = pos
        if blocked_by is not None:
            out.reasons[job.id] = blocked_by
            out.reason_codes[job.id] = "capacity"
            continue
        key = (
            job.pool,
            job.gpu_type,
            job.preemptible,
            # require_region with no region is its own constraint (region-less workers only).
            job.require_region,
            job.region if job.require_region else None,
            job.cpu,
            job.memory,
            job.gpu,
            job.replicas,
        )
        if key not in ever:
            ever[key] = _slots_when_empty(workers, job) >= job.replicas
        if not ever[key]:
            out.reasons[job.id] = "no registered worker can ever fit it"
            out.reason_codes[job.id] = "never-fits"
            continue
        chosen = _first_fit(workers, job)
        if chosen is None:
            # Head-of-line blocking is the point of the baseline: everything behind waits.
            blocked_by = f"behind {job.id} in FIFO order"
            out.reasons[job.id] = "waiting for capacity at the head of the FIFO queue"
            out.reason_codes[job.id] = "capacity"
            continue
        for rank, (f, gpus) in enumerate(chosen):
            out.placements.append(
                Placement(job.id, f.w.id, gpus, rank=rank, world_size=job.replicas, attempt=job.attempt)
            )
    return out


def _slots_when_empty(workers: list[_Free], job: PendingJob) -> int:
    """How many replicas of ``job`` the allowed workers could hold if they ran nothing else."""
    n = 0
    for f in workers:
        w = f.w
        if not _allowed(w, job):
            continue
        per = [
            w.cpu / job.cpu if job.cpu > 0 else math.inf,
            w.memory / job.memory if job.memory else math.inf,
        ]
        per.append(w.gpu / job.gpu if job.gpu else math.inf)
        n += int(min(per) + EPS) if math.isfinite(min(per)) else job.replicas
        if n >= job.replicas:
            break
    return n


def _first_fit(workers: list[_Free], job: PendingJob) -> list[tuple[_Free, tuple[int, ...]]] | None:
    """All replicas on the first workers that fit (several on one worker if it has room), or None
    with nothing taken."""
    taken: list[tuple[_Free, tuple[int, ...]]] = []
    for f in workers:
        if len(taken) == job.replicas:
            break
        if not _allowed(f.w, job):
            continue
        while len(taken) < job.replicas and _fits(f, job):
            gpus = tuple(f.gpus[: job.gpu])
            f.gpus = f.gpus[job.gpu :]
            f.cpu -= job.cpu
            f.mem -= job.memory
            taken.append((f, gpus))
    if len(taken) == job.replicas:
        return taken
    for f, gpus in taken:
        f.cpu += job.cpu
        f.mem += job.memory
        f.gpus = sorted([*f.gpus, *gpus])
    return None
