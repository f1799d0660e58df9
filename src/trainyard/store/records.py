"""What callers hand the store and get back from it, besides the model's records: its policy,
placements, leases, a worker's report of an ending attempt, and the answers to reports and
submissions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainyard.model.records import Job
from trainyard.model.states import AttemptOutcome, JobStatus

DEFAULT_MAX_PREEMPTIONS = 10


@dataclass(frozen=True)
class StoreConfig:
    """The policy the store applies, given when it is built."""

    max_preemptions: int = DEFAULT_MAX_PREEMPTIONS
    """Free preemptions per job; past them a preemption uses a retry like any infrastructure failure,
    so a job that keeps being evicted (a flapping spot fleet) cannot cycle forever."""


@dataclass(frozen=True)
class SubmitResult:
    """A submission's job, and whether this call created it (False: an idempotent replay)."""

    job: Job
    created: bool


@dataclass(frozen=True)
class Placement:
    """One scheduler decision to lease: a job (or one rank of a gang) onto a worker's GPUs."""

    job_id: str
    worker_id: str
    gpu_indices: tuple[int, ...]
    expected_attempt: int
    rank: int = 0
    """A gang's rank (its row is ``member_id(job_id, rank)``); a gang is leased whole or not at all."""
    world_size: int = 1


@dataclass(frozen=True)
class Lease:
    """A granted lease with everything the worker's assignment needs."""

    job_id: str
    attempt: int
    worker_id: str
    lease_token: str
    gpu_indices: tuple[int, ...]
    spec: dict[str, Any]
    name: str | None
    team: str
    user: str
    resume_key: str | None  # newest checkpoint of an earlier attempt
    cpu: float
    memory: int
    max_runtime: float
    rank: int = 0
    world_size: int = 1
    master_addr: str = ""
    """Rank 0's worker host (gangs): where the ranks rendezvous."""
    master_port: int = 0
    gang_id: str | None = None
    array_id: str | None = None
    """An array task's parent: ``TRAINYARD_ARRAY_JOB_ID``."""
    array_index: int | None = None
    """An array task's index: ``TRAINYARD_ARRAY_INDEX``."""


@dataclass(frozen=True)
class ReportResult:
    """The answer to a worker's report: accepted (and the job's status now) or refused as stale."""

    ok: bool
    status: JobStatus | None = None
    message: str = ""
    gang_id: str | None = None
    """Set when the report was a gang rank's: other ranks may now have to stop (``gang_stops``)."""


@dataclass(frozen=True)
class FinishReport:
    """How an attempt ended: a worker's report, or the platform's own verdict (a lost worker, a
    timeout) in the same shape. Ending an attempt always takes one of these."""

    job_id: str
    attempt: int
    lease_token: str
    worker_id: str
    outcome: AttemptOutcome
    exit_code: int | None = None
    reason: str | None = None
    stderr_tail: str | None = None
    artifacts: tuple[tuple[str, int, str, str], ...] = ()  # (path, size, sha256, object_key)
    log_bytes: int | None = None
    checkpoint_key: str | None = None


@dataclass(frozen=True)
class WorkerCommand:
    """What a worker must do about one attempt it holds."""

    kind: str  # cancel | kill_stale | timeout | preempt
    job_id: str
    attempt: int
    lease_token: str
    reason: str = ""
    worker_id: str | None = None


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing returns."""

    status: Sequence[str] = ()
    user: str | None = None
    team: str | None = None
    name: str | None = None
    visible_team: str | None = None  # None: every team (admins)
