"""Typed rows that leave the store, and the conversions of table rows into the model's records.

``PendingRow`` and ``RunningRow`` are the scheduler's snapshot as read, column for column. They are
``NamedTuple``s rather than frozen dataclasses: as immutable and as typed, with the tuple behaviour
of the ``sa.Row`` they replace, and about four times cheaper to build (0.5 µs against 2 µs a row),
which matters for a cycle that reads every pending job.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import sqlalchemy as sa

from trainyard.model.records import Attempt, Event, Job, Replica, Team, Worker
from trainyard.model.states import JobStatus
from trainyard.store.schema import job_attempts, jobs


class PendingRow(NamedTuple):
    """A pending job with every field the scheduler weighs (columns only: no spec parsing)."""

    id: str
    team: str
    user_name: str
    priority: int
    queued_at: float
    cpu: float
    memory: int
    gpu: int
    gpu_type: str | None
    pool: str | None
    region: str | None
    require_region: bool
    data_uris: list[str] | None
    preemptible: bool
    replicas: int
    max_runtime: float
    attempt: int
    array_id: str | None
    array_limit: int | None


class RunningRow(NamedTuple):
    """A live attempt with what it holds and what losing it would cost (for preemption)."""

    id: str
    team: str
    worker_id: str | None
    priority: int
    cpu: float
    memory: int
    gpu: int
    gpu_indices: list[int]
    preemptible: bool
    started_at: float | None
    scheduled_at: float
    max_runtime: float
    status: str
    attempt: int
    lease_token: str | None
    gang_id: str | None
    replica_rank: int
    last_checkpoint_at: float | None
    array_id: str | None


PENDING_COLUMNS: tuple[sa.Column[Any], ...] = tuple(jobs.c[name] for name in PendingRow._fields)
"""What ``PendingRow`` is selected from, in its field order."""

RUNNING_COLUMNS: tuple[sa.Column[Any], ...] = tuple(
    job_attempts.c[name] if name in ("gpu_indices", "scheduled_at", "last_checkpoint_at") else jobs.c[name]
    for name in RunningRow._fields
)
"""What ``RunningRow`` is selected from, in its field order (the join of a job and its attempt)."""


def team_record(r: sa.Row[Any]) -> Team:
    """A ``teams`` row as a ``Team``."""
    return Team(
        name=r.name,
        weight=r.weight,
        cpu_quota=r.cpu_quota,
        memory_quota=r.memory_quota,
        gpu_quota=r.gpu_quota,
        gpu_type_quotas=dict(r.gpu_type_quotas or {}),
        monthly_budget=r.monthly_budget,
    )


def replica_record(r: sa.Row[Any]) -> Replica:
    """A gang member's ``jobs`` row as a ``Replica``."""
    return Replica(r.replica_rank, r.id, JobStatus(r.status), r.attempt, r.worker_id, r.exit_code, r.reason)


def job_record(
    row: sa.Row[Any],
    attempts: list[Attempt],
    replicas: list[Replica] | None = None,
    array_counts: dict[str, int] | None = None,
) -> Job:
    """A ``jobs`` row, with its attempts (and a gang's other ranks, an array's task counts), as a
    ``Job``."""
    return Job(
        id=row.id,
        name=row.name,
        user=row.user_name,
        team=row.team,
        status=JobStatus(row.status),
        priority=row.priority,
        pool=row.pool,
        spec=row.spec,
        created_at=row.created_at,
        updated_at=row.updated_at,
        queued_at=row.queued_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attempt=row.attempt,
        tries=row.tries,
        worker_id=row.worker_id,
        exit_code=row.exit_code,
        reason=row.reason,
        pending_reason=row.pending_reason,
        not_before=row.not_before,
        attempts=attempts,
        lease_token=row.lease_token,
        gang_id=row.gang_id,
        replica_rank=row.replica_rank,
        replicas=replicas or [],
        array_id=row.array_id,
        array_index=row.array_index,
        array_tasks=row.array_tasks,
        array_counts=array_counts,
        awaiting_dependencies=bool(row.awaiting_dependencies),
    )


def attempt_record(a: sa.Row[Any]) -> Attempt:
    """A ``job_attempts`` row as an ``Attempt``."""
    return Attempt(
        job_id=a.job_id,
        number=a.number,
        worker_id=a.worker_id,
        status=a.status,
        outcome=a.outcome,
        gpu_indices=list(a.gpu_indices),
        scheduled_at=a.scheduled_at,
        started_at=a.started_at,
        finished_at=a.finished_at,
        exit_code=a.exit_code,
        reason=a.reason,
        stderr_tail=a.stderr_tail,
        log_bytes=a.log_bytes,
        lease_token=a.lease_token,
    )


def event_record(r: sa.Row[Any]) -> Event:
    """A ``job_events`` row as an ``Event``."""
    return Event(
        id=r.id,
        event_id=r.event_id,
        job_id=r.job_id,
        team=r.team,
        type=r.type,
        from_status=r.from_status,
        to_status=r.to_status,
        attempt=r.attempt,
        at=r.at,
        data=r.data,
    )


def worker_record(r: sa.Row[Any]) -> Worker:
    """A ``workers`` row as a ``Worker``."""
    return Worker(
        id=r.id,
        name=r.name,
        hostname=r.hostname,
        pool=r.pool,
        region=r.region,
        cpu=r.cpu,
        memory=r.memory,
        gpu=r.gpu,
        gpu_type=r.gpu_type,
        labels=dict(r.labels),
        status=r.status,
        version=r.version,
        registered_at=r.registered_at,
        last_heartbeat=r.last_heartbeat,
        cached_uris=tuple(r.cached_uris or ()),
        drain_deadline=r.drain_deadline,
    )
