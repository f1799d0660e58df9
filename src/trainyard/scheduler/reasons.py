"""Why a pending job waits, in words: the texts behind ``Decisions.reasons``.

Users read these in ``yard get`` and the API, so they say what the job needs and what stands in the
way: a constraint no worker matches, a demand larger than any worker, a gang larger than the fleet,
or (the usual case) capacity that is in use now. The quota, preemption and reservation texts are
written where those checks are made (:mod:`.teams`, :mod:`.preemption`, :mod:`.cycle`), with the
helpers here.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime

from trainyard.model.quantity import format_memory, human_memory
from trainyard.scheduler.capacity import EPS, Fleet, WorkerGroup, replica_slots
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


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@functools.lru_cache(maxsize=256)  # a cycle names a few reservations' starts for many jobs
def clock(t: float, now: float) -> str:
    """A time in a reason text: UTC to the minute (rounded up), with the date unless it is today's,
    e.g. ``14:05 UTC`` or ``Mar 5 14:05 UTC``.

    Never a duration from ``now``: a reason is stored and rewritten only when its text changes, so
    it must stay true however late it is read (clients show ``estimated_start_at`` in local time)."""
    at = datetime.fromtimestamp(math.ceil(t / 60.0) * 60.0, UTC)
    if at.date() == datetime.fromtimestamp(now, UTC).date():
        return f"{at:%H:%M} UTC"
    return f"{_MONTHS[at.month - 1]} {at.day} {at:%H:%M} UTC"


def expected_start(t: float, now: float) -> str:
    """When a job is expected to start at the latest: ``by 14:05 UTC``, or ``any moment`` once due."""
    return f"by {clock(t, now)}" if t > now else "any moment"


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
    shapes = fleet.shapes_of(groups)
    cpu, mem, gpu = job.cpu, job.memory, job.gpu
    # A loop rather than any() over a generator: this runs for every new shape (a thousand a
    # cycle at 10k pending), and the first worker shape mostly fits.
    for s in shapes:
        if s[0] + EPS >= cpu and s[1] >= mem and s[2] >= gpu:
            break
    else:
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


def capacity_reason(fleet: Fleet, memo: dict[int, str], groups: list[WorkerGroup], job: PendingJob) -> str:
    """The "waiting for capacity" text: what the job needs, and the largest free GPU count if that is why.

    ``memo`` holds the texts already written for the job's shape, by the GPU count they name."""
    largest = -1  # the text names the largest free GPU count only when it is too small
    if job.gpu:
        largest = fleet.largest_free_gpus(groups)
        if largest < 0:  # max(largest, 0), without the builtin's keyword parsing: once per wait
            largest = 0
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
