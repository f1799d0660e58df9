"""Plain records that the store returns: what the API, scheduler and reconciler read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainyard.model.states import JobStatus


@dataclass(frozen=True)
class User:
    name: str
    team: str
    role: str  # one of ROLES
    tier: str | None = None  # submission limits (TRAINYARD_RATE_TIERS); None: the default tier

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def rank(self) -> int:
        return ROLES.index(self.role) if self.role in ROLES else 0

    @property
    def can_submit(self) -> bool:
        """Viewers read their team's jobs; every other role submits."""
        return self.rank >= ROLES.index("user")

    def manages(self, team: str) -> bool:
        """Team admins act on any job, secret and token of their team; admins on all."""
        return self.is_admin or (self.role == "team-admin" and self.team == team)


ROLES = ("viewer", "user", "team-admin", "admin")
"""Ascending: each role may do what the ones before it may."""


@dataclass(frozen=True)
class TokenInfo:
    """An API token as listed: never the token itself (only its hash is stored)."""

    id: str
    user: str
    team: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    description: str | None
    created_by: str | None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    team: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class SecretInfo:
    """A team secret's metadata; the value never leaves the control plane except to a leased job."""

    team: str
    name: str
    created_at: float
    updated_at: float
    updated_by: str


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
    gang_id: str | None = None
    """The gang's job id (rank 0's) for every row of a gang; None for a single-replica job."""
    replica_rank: int = 0
    replicas: list[Replica] = field(default_factory=list)
    """A gang's ranks 1..N-1 as seen from rank 0 (the job); empty otherwise."""
    array_id: str | None = None
    """An array task's parent (the array's job id); None for any other job."""
    array_index: int | None = None
    """An array task's index (``TRAINYARD_ARRAY_INDEX``)."""
    array_tasks: int | None = None
    """An array's parent: how many tasks it has; None for any other job."""
    array_counts: dict[str, int] | None = None
    """An array's parent, when read with them: its tasks' count per status."""
    awaiting_dependencies: bool = False
    """Waiting for the jobs of its spec's ``depends_on`` (its pending reason says which)."""
    archived: bool = False
    """Moved to object storage by retention: read from its archive, and never changes again."""

    @property
    def is_array(self) -> bool:
        """An array's parent: bookkeeping whose status follows its tasks; it never runs itself."""
        return self.array_tasks is not None


@dataclass(frozen=True)
class Replica:
    """One rank of a gang beyond rank 0: a member row that runs like a job of its own."""

    rank: int
    job_id: str
    status: JobStatus
    attempt: int
    worker_id: str | None
    exit_code: int | None
    reason: str | None


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
    monthly_budget: int | None = None
    """Micro-dollars a calendar month (UTC); None: no budget (``model/pricing.py``)."""


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
    cached_uris: tuple[str, ...] = ()
    """Dataset URIs in the worker's local data cache (placement prefers workers holding a job's data)."""
    drain_deadline: float | None = None
    """A DRAINING worker's attempts are preempted from this time on (None: its agent drains itself)."""


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
