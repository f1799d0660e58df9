"""The job lifecycle as data: one enum, one table of allowed moves.

Every transition in the store is checked against ``ALLOWED`` and applied as a guarded
``UPDATE ... WHERE status IN (...)`` so that a move is either applied once or refused.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "PENDING"
    """Accepted and waiting for capacity (or for a retry's backoff to pass)."""
    SCHEDULED = "SCHEDULED"
    """Leased to a worker with a fresh lease token; the worker has not started it yet."""
    RUNNING = "RUNNING"
    """The worker reported the process started."""
    CANCELLING = "CANCELLING"
    """A cancel was requested while a worker held the job; waiting for the worker to stop it."""
    SUCCEEDED = "SUCCEEDED"
    """The last attempt exited 0."""
    FAILED = "FAILED"
    """The last attempt failed and the retry policy allows no other."""
    CANCELLED = "CANCELLED"
    """Stopped at a user's request."""
    TIMED_OUT = "TIMED_OUT"
    """Ran past ``max_runtime``."""
    PREEMPTED = "PREEMPTED"
    """Stopped to free capacity (checkpointed); passes straight back to PENDING without using a retry."""
    LOST = "LOST"
    """Its worker vanished; passes back to PENDING (an infrastructure retry) or on to FAILED."""


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)
"""States a job never leaves, except by an explicit restart (a new attempt chain)."""

LIVE: frozenset[JobStatus] = frozenset({JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.CANCELLING})
"""States in which a worker holds a lease on the job."""

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset(
        {
            JobStatus.SCHEDULED,
            JobStatus.CANCELLED,
            JobStatus.FAILED,  # a dependency it waits for can never be met (DependencyNeverSatisfied)
        }
    ),
    JobStatus.SCHEDULED: frozenset(
        {
            JobStatus.PENDING,  # the command could not start and the retry policy allows another try
            JobStatus.RUNNING,
            JobStatus.CANCELLING,
            JobStatus.CANCELLED,
            JobStatus.FAILED,
            JobStatus.LOST,
            JobStatus.PREEMPTED,
            JobStatus.SUCCEEDED,
            JobStatus.TIMED_OUT,
        }
    ),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.PENDING,  # the attempt failed and the retry policy allows another try
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLING,
            JobStatus.CANCELLED,
            JobStatus.TIMED_OUT,
            JobStatus.PREEMPTED,
            JobStatus.LOST,
        }
    ),
    JobStatus.CANCELLING: frozenset(
        {JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT}
    ),
    JobStatus.PREEMPTED: frozenset({JobStatus.PENDING}),
    JobStatus.LOST: frozenset({JobStatus.PENDING, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.TIMED_OUT: frozenset(),
}

RESTARTABLE: frozenset[JobStatus] = TERMINAL
"""A restart is the one way out of a terminal state: it starts a new attempt from PENDING."""


def sources_of(dst: JobStatus) -> frozenset[JobStatus]:
    """Every state from which ``dst`` may be entered: the guard of a conditional UPDATE."""
    return frozenset(s for s, targets in ALLOWED.items() if dst in targets)


class AttemptOutcome(StrEnum):
    """How a worker says an attempt ended; the server maps it to a job state and the retry policy."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the user's process exited non-zero
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    START_FAILED = "start_failed"  # infrastructure: the command could not be started
    INFRA = "infra"  # infrastructure: upload or agent failure
    PREEMPTED = "preempted"
    LOST = "lost"  # set by the reconciler, never by a worker


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"

    @property
    def rank(self) -> int:
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.URGENT: 3}
