"""Why a pending job waits, in words: the texts behind ``Decisions.reasons``.

Users read these in ``yard get`` and the API, so they say what the job needs and what stands in the
way: a constraint no worker matches, a demand larger than any worker, a gang larger than the fleet,
or (the usual case) capacity that is in use now. The quota, preemption and reservation texts are
written where those checks are made (:mod:`.teams`, :mod:`.preemption`, :mod:`.cycle`), with the
helpers here.
"""

from __future__ import annotations

from trainyard.model.quantity import format_memory, human_memory
from trainyard.scheduler.capacity import EPS, OCTAVE_SLOTS, Fleet, WorkerGroup, replica_slots
from trainyard.scheduler.snapshot import PendingJob

NEVER_FITS = "no registered worker can ever fit: "


def describe(job: PendingJob) -> str:
    """The job's per-replica demand in words: cpu, memory, GPUs (count and type) and pool."""
    parts = [f"{job.cpu:g} cpu", f"{format_memory(job.memory)} memory"]
    if job.gpu:
        parts.append(f"{job.gpu}×{job.gpu_type or 'gpu'}")
    where = f" in pool {job.pool}" if job.pool else ""
    return ", ".join(parts) + where


def amount(label: str, value: float) -> str:
    """A quantity for a reason text: memory in human units, anything else as a plain number."""
    return human_memory(value) if label == "memory" else f"{value:g}"


def when(t: float, now: float) -> str:
    """A time as seconds from now, e.g. ``now+120s`` (never negative)."""
    return f"now+{max(t - now, 0.0):.0f}s"


def never_fits_reason(fleet: Fleet, groups: list[WorkerGroup], job: PendingJob) -> str | None:
    """Why no registered worker could ever run the job, even with the fleet empty, or None.

    ``groups`` are the groups whose hard constraints the job accepts."""
    if not fleet.workers:
        return "no schedulable workers are registered"
    if not groups:
        constraint = []
        if job.pool:
            constraint.append(f"pool {job.pool}")
        if job.gpu and job.gpu_type:
            constraint.append(f"gpu type {job.gpu_type}")
        if job.require_region:
            constraint.append(f"region {job.region}")
        if not job.preemptible and any(g.spot for g in fleet.groups):
            constraint.append("on-demand (non-spot) capacity")
        return f"{NEVER_FITS}none matches {' and '.join(constraint) or 'its constraints'}"
    shapes: dict[tuple[float, int, int], int] = {}
    for g in groups:
        for shape, n in g.shapes.items():
            shapes[shape] = shapes.get(shape, 0) + n
    fits = {
        s: n for s, n in shapes.items() if s[0] + EPS >= job.cpu and s[1] >= job.memory and s[2] >= job.gpu
    }
    if not fits:
        cpu, mem, gpu = max(shapes, key=lambda s: (s[2], s[0], s[1]))
        return (
            f"{NEVER_FITS}needs {describe(job)} on one worker; the largest is {cpu:g} cpu, "
            f"{human_memory(mem)} memory, {gpu} gpu"
        )
    if job.replicas > 1:
        slots = replica_slots(groups, job)
        if slots < job.replicas:
            return f"{NEVER_FITS}gang of {job.replicas} replicas of {describe(job)}; the fleet holds {slots}"
    return None


def capacity_reason(memo: dict[int, str], groups: list[WorkerGroup], job: PendingJob) -> str:
    """The "waiting for capacity" text: what the job needs, and the largest free GPU count if that is why.

    ``memo`` holds the texts already written for the job's shape, by the GPU count they name."""
    largest = -1  # the text names the largest free GPU count only when it is too small
    if job.gpu:
        for g in groups:
            if g.buckets.keys:
                largest = max(largest, g.buckets.keys[-1] // OCTAVE_SLOTS)
        largest = max(largest, 0)
        if largest >= job.gpu:
            largest = -1
    hit = memo.get(largest)
    if hit is not None:
        return hit
    if job.gpu:
        if largest >= 0:
            why = (
                f"waiting for capacity: needs {job.gpu}×{job.gpu_type or 'gpu'} on one worker; "
                f"largest free is {largest}"
            )
        else:
            why = f"waiting for capacity: needs {describe(job)} on one worker"
    else:
        why = f"waiting for capacity: needs {describe(job)}"
    if job.replicas > 1:
        why += f" for each of {job.replicas} gang replicas"
    memo[largest] = why
    return why
