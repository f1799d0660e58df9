"""Plain records that the store returns: what the API, scheduler and reconciler read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainyard.model.states import JobStatus


@dataclass(frozen=True)
class User:
    name: str
    team: str
    role: str  # "admin" | "user"
    tier: str | None = None  # submission limits (TRAINYARD_RATE_TIERS); None: the default tier

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Attempt:
    job_id: str
    number: int
    worker_id: str
    status: str
    outcome: str | None
    gpu_indices: list[int]
    scheduled_at: float
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    reason: str | None
    stderr_tail: str | None
    log_bytes: int | None
    lease_token: str = field(repr=False, default="")


@dataclass(frozen=True)
class Job:
    id: str
    name: str | None
    user: str
    team: str
    status: JobStatus
    priority: int
    pool: str | None
    spec: dict[str, Any]
    created_at: float
    updated_at: float
    queued_at: float
    started_at: float | None
    finished_at: float | None
    attempt: int
    tries: int
    worker_id: str | None
    exit_code: int | None
    reason: str | None
    pending_reason: str | None
    not_before: float | None
    attempts: list[Attempt] = field(default_factory=list)
    lease_token: str | None = field(repr=False, default=None)


@dataclass(frozen=True)
class Event:
    id: int
    event_id: str
    job_id: str
    team: str
    type: str
    from_status: str | None
    to_status: str | None
    attempt: int
    at: float
    data: dict[str, Any]


@dataclass(frozen=True)
class Team:
    """A team's share of the fleet: its fair-share weight and concurrent quotas (None: no limit)."""

    name: str
    weight: float = 1.0
    cpu_quota: float | None = None
    memory_quota: int | None = None
    gpu_quota: int | None = None
    gpu_type_quotas: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Worker:
    id: str
    name: str
    hostname: str
    pool: str
    region: str | None
    cpu: float
    memory: int
    gpu: int
    gpu_type: str | None
    labels: dict[str, str]
    status: str  # ALIVE | DRAINING | DEAD
    version: str | None
    registered_at: float
    last_heartbeat: float


@dataclass(frozen=True)
class ArtifactRecord:
    job_id: str
    attempt: int
    path: str
    size: int
    sha256: str
    object_key: str
    created_at: float


@dataclass(frozen=True)
class LogChunk:
    job_id: str
    attempt: int
    seq: int
    start_offset: int
    end_offset: int
    object_key: str
    stored_size: int


@dataclass(frozen=True)
class OutboxRow:
    id: int
    event_id: str
    topic: str
    key: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class LiveAttempt:
    """A lease held by a worker, with what it uses: the scheduler's view of a running attempt."""

    job_id: str
    attempt: int
    worker_id: str
    lease_token: str
    status: JobStatus
    cpu: float
    memory: int
    gpu_indices: tuple[int, ...]
    scheduled_at: float = 0.0
