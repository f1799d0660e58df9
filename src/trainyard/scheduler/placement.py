"""Scheduler v1: place pending jobs on workers that fit, highest priority first, then oldest.

A pure function of a snapshot: no I/O, no clock reads. Best fit keeps big holes for big jobs
(a 1-GPU job goes to the worker with the fewest free GPUs that still fits it, so 8-GPU nodes stay
whole for 8-GPU jobs). Jobs that fit nowhere now get a reason; jobs that no registered worker could
ever fit say so, so a user is not left waiting for capacity that will never exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainyard.model.quantity import format_memory


@dataclass(frozen=True)
class JobDemand:
    id: str
    priority: int
    queued_at: float
    cpu: float
    memory: int
    gpu: int
    gpu_type: str | None
    pool: str | None
    attempt: int  # current attempt number: fences the lease against a concurrent change


@dataclass(frozen=True)
class WorkerCapacity:
    id: str
    pool: str
    cpu: float
    memory: int
    gpu: int
    gpu_type: str | None
    used_cpu: float = 0.0
    used_memory: int = 0
    used_gpus: frozenset[int] = frozenset()
    schedulable: bool = True  # alive and not draining


@dataclass(frozen=True)
class Assignment:
    job_id: str
    worker_id: str
    gpu_indices: tuple[int, ...]
    attempt: int


@dataclass
class Decisions:
    placements: list[Assignment] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class _Free:
    w: WorkerCapacity
    cpu: float
    memory: int
    gpus: list[int]

    def fits(self, j: JobDemand) -> bool:
        return self.cpu + 1e-9 >= j.cpu and self.memory >= j.memory and len(self.gpus) >= j.gpu


def _eligible(w: WorkerCapacity, j: JobDemand) -> bool:
    """Hard constraints that do not depend on what is running: pool and GPU type."""
    if j.pool is not None and w.pool != j.pool:
        return False
    return not (j.gpu > 0 and j.gpu_type is not None and w.gpu_type != j.gpu_type)


def _could_ever_fit(w: WorkerCapacity, j: JobDemand) -> bool:
    return _eligible(w, j) and w.cpu + 1e-9 >= j.cpu and w.memory >= j.memory and w.gpu >= j.gpu


def _describe(j: JobDemand) -> str:
    parts = [f"{j.cpu:g} cpu", f"{format_memory(j.memory)} memory"]
    if j.gpu:
        parts.append(f"{j.gpu}×{j.gpu_type or 'gpu'}")
    where = f" in pool {j.pool}" if j.pool else ""
    return ", ".join(parts) + where


def order(pending: list[JobDemand]) -> list[JobDemand]:
    return sorted(pending, key=lambda j: (-j.priority, j.queued_at, j.id))


def schedule(pending: list[JobDemand], workers: list[WorkerCapacity]) -> Decisions:
    out = Decisions()
    free = [
        _Free(w, w.cpu - w.used_cpu, w.memory - w.used_memory, sorted(set(range(w.gpu)) - set(w.used_gpus)))
        for w in workers
        if w.schedulable
    ]
    for j in order(pending):
        candidates = [f for f in free if _eligible(f.w, j) and f.fits(j)]
        if candidates:
            # Best fit: least free GPUs left, then least free CPU share, then memory; ties by id.
            best = min(
                candidates,
                key=lambda f: (
                    len(f.gpus) - j.gpu,
                    (f.cpu - j.cpu) / max(f.w.cpu, 1e-9),
                    (f.memory - j.memory) / max(f.w.memory, 1),
                    f.w.id,
                ),
            )
            gpus = tuple(best.gpus[: j.gpu])
            best.gpus = best.gpus[j.gpu :]
            best.cpu -= j.cpu
            best.memory -= j.memory
            out.placements.append(Assignment(j.id, best.w.id, gpus, j.attempt))
            continue
        out.reasons[j.id] = _pending_reason(j, workers, free)
    return out


def _pending_reason(j: JobDemand, workers: list[WorkerCapacity], free: list[_Free]) -> str:
    # A reason names no queue position: positions shift whenever a job ahead starts, and storing them
    # would rewrite every waiting job's row on every cycle.
    live = [w for w in workers if w.schedulable]
    if not any(_could_ever_fit(w, j) for w in live):
        if not live:
            return "no schedulable workers are registered"
        eligible = [w for w in live if _eligible(w, j)]
        if not eligible:
            constraint = []
            if j.pool:
                constraint.append(f"pool {j.pool}")
            if j.gpu and j.gpu_type:
                constraint.append(f"gpu type {j.gpu_type}")
            return f"no registered worker matches {' and '.join(constraint)}; it cannot run until one joins"
        biggest = max(eligible, key=lambda w: (w.gpu, w.cpu, w.memory))
        return (
            f"needs {_describe(j)} on one worker; the largest registered is {biggest.cpu:g} cpu, "
            f"{format_memory(biggest.memory)} memory, {biggest.gpu} gpu; "
            "it cannot run until a bigger worker joins"
        )
    fits_free = [f for f in free if _eligible(f.w, j)]
    if j.gpu:
        largest = max((len(f.gpus) for f in fits_free), default=0)
        if largest < j.gpu:
            return (
                f"waiting for capacity: needs {j.gpu}×{j.gpu_type or 'gpu'} on one worker; "
                f"largest free is {largest}"
            )
    return f"waiting for capacity: needs {_describe(j)}"
