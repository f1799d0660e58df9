"""What each consumer of the store needs, as small ``Protocol``s.

Modules outside the store depend on these rather than on ``SqlStore``: the composition root builds
the store and hands each consumer the facade or the repository that fits. ``SqlStore`` satisfies
every one; each repository satisfies those of its topic (checked by mypy in ``sql.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

from trainyard.model.records import AuditEntry, Event, OutboxRow, SecretInfo, Team, TokenInfo, User
from trainyard.store.logsearch import LogHit, LogQuery

if TYPE_CHECKING:
    from trainyard.model.logsearch import IndexedLine
    from trainyard.model.records import ArtifactRecord, Event, Job, LiveAttempt, LogChunk, Team, User, Worker
    from trainyard.model.spec import JobSpec
    from trainyard.store.archive import ArchiveRepo
    from trainyard.store.dependencies import Resolution
    from trainyard.store.leases import SchedulingRead
    from trainyard.store.logsearch import LogHit, LogQuery, QueuedChunk
    from trainyard.store.records import (
        FinishReport,
        JobFilter,
        Lease,
        Placement,
        ReportResult,
        SubmitResult,
        WorkerCommand,
    )
    from trainyard.store.usage import UsageRepo


class Outbox(Protocol):
    """What the outbox relay needs: unsent events in commit order, and marking them sent."""

    def outbox_unsent(self, limit: int = ...) -> list[OutboxRow]:
        """The oldest unsent rows, in id order."""
        ...

    def outbox_mark_sent_ranges(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Mark sent the unsent rows whose ids lie in these inclusive ranges, each read whole."""
        ...


class EventLog(Protocol):
    """What the event-log replay check needs: the outbox joined with its events."""

    def outbox_events(self, after_id: int = ..., limit: int = ...) -> list[tuple[int, str, bool, Event]]:
        """Outbox rows after ``after_id`` as ``(outbox id, topic, sent, event)``, in id order."""
        ...

    def existing_event_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Which of these event ids the store holds."""
        ...


class Heartbeats(Protocol):
    """What the cache's SQL fallback needs from the fleet: worker heartbeats in the ``workers``
    table, a writer transaction of the store's (its rate buckets), and a liveness check."""

    def record_heartbeat(self, worker_id: str, at: float) -> None:
        """Set one worker's last heartbeat."""
        ...

    def heartbeat_at(self, worker_id: str) -> float | None:
        """One worker's last heartbeat as stored."""
        ...

    def heartbeats_at(self, worker_ids: Sequence[str]) -> dict[str, float]:
        """The stored last heartbeat of each of these workers that exists."""
        ...

    def transaction(self) -> AbstractContextManager[sa.Connection]:
        """A write transaction of the store (on SQLite, queued behind the store's writers)."""
        ...

    def ping(self) -> bool:
        """True when the database answers; raises when it does not."""
        ...


class RateBuckets(Protocol):
    """What the cache's SQL fallback needs for rate limits: one token bucket, updated atomically."""

    def take_rate_tokens(
        self, bucket: str, burst: float, now: float, step: Callable[[float, float], tuple[float, float]]
    ) -> float:
        """Apply ``step`` (tokens, stamp) → (left, wait) to the bucket; returns the wait."""
        ...


class CacheFallback(Heartbeats, RateBuckets, Protocol):
    """Everything the cache's SQL fallback uses of the store."""


class Tenancy(Protocol):
    """What the admin commands and routes need: teams, users and API tokens."""

    def create_user(self, name: str, team: str, role: str = ..., tier: str | None = ...) -> str:
        """Create a user (or add a token to an existing one); returns a new API token."""
        ...

    def get_user(self, name: str) -> User | None:
        """The user of that name, if any."""
        ...

    def create_token(
        self, user: str, *, expires_at: float | None, description: str | None, created_by: str
    ) -> tuple[TokenInfo, str]:
        """A new API token for an existing user: its listing and the token."""
        ...

    def list_tokens(self, *, user: str | None = ..., team: str | None = ...) -> list[TokenInfo]:
        """API tokens as listed, oldest first."""
        ...

    def revoke_token(self, token_id_: str) -> TokenInfo | None:
        """Revoke by listed id; None: no such token."""
        ...

    def set_team(self, name: str, changes: dict[str, Any]) -> Team:
        """Create or update a team."""
        ...

    def list_teams(self) -> list[Team]:
        """Every team, by name."""
        ...

    def team_exists(self, name: str) -> bool:
        """Whether the team exists."""
        ...


class Authenticator(Protocol):
    """What request authentication needs: the user behind a token, or an SSO identity."""

    def token_user(self, token: str) -> tuple[User, float | None] | None:
        """The user a valid token belongs to, and when the token expires."""
        ...

    def provision_user(self, name: str, team: str, role: str) -> User:
        """A user vouched for by single sign-on, created or brought in step."""
        ...


class Secrets(Protocol):
    """What team secrets need: sealed values by team and name."""

    def put_secret(self, team: str, name: str, ciphertext: str, actor: str) -> SecretInfo:
        """Create or replace a team secret."""
        ...

    def list_secrets(self, team: str) -> list[SecretInfo]:
        """A team's secrets (metadata only)."""
        ...

    def secret_ciphertexts(self, team: str, names: Sequence[str]) -> dict[str, str]:
        """The sealed values of those of a team's secrets that exist."""
        ...

    def delete_secret(self, team: str, name: str) -> bool:
        """Delete a team secret; False when there was none."""
        ...


class AuditTrail(Protocol):
    """What the audit trail needs: appending entries and reading them back."""

    def audit(self, actor: str, action: str, target: str, team: str | None, details: dict[str, Any]) -> None:
        """Append an entry."""
        ...

    def list_audit(
        self,
        *,
        team: str | None = ...,
        actor: str | None = ...,
        action: str | None = ...,
        limit: int = ...,
    ) -> list[AuditEntry]:
        """Entries, newest first."""
        ...


class BatchWriter(Protocol):
    """What group commit needs: several writes applied in one transaction."""

    def apply_batch(self, ops: Sequence[Callable[[sa.Connection], Any]]) -> list[tuple[bool, Any]]:
        """Run the ops in one transaction; each op's result or exception, in order."""
        ...


class Schema(Protocol):
    """What ``yard admin migrate`` needs: the schema brought up to date, and the pool closed."""

    def migrate(self) -> None:
        """Bring the schema to the newest migration."""
        ...

    def close(self) -> None:
        """Close the pool's connections."""
        ...


class LogIndex(Protocol):
    """What log search and retention need of the log search index (``store/logsearch.py``)."""

    def search_logs(self, query: LogQuery) -> list[LogHit]:
        """Indexed lines holding the query's phrase that its caller may see, newest first."""
        ...

    def delete_log_index(self, job_ids: Sequence[str]) -> int:
        """Remove the jobs' indexed lines and queued chunks; how many lines went."""
        ...


# ---- what each control-plane service uses (server/services/) ------------------------------------


class AttemptsStore(Protocol):
    """What ``server/services/attempts.py`` uses of the store."""

    def add_log_chunk_in(self, conn: sa.Connection, chunk: LogChunk, token: str) -> bool:
        """Index an uploaded log chunk in the caller's transaction (group commit); idempotent by
        sequence number; False: not that attempt's token."""
        ...

    def attempt_token_ok(self, job_id: str, attempt: int, token: str) -> bool:
        """An attempt's own lease token (even after it ended) lets its worker upload that attempt's logs."""
        ...

    def report_finished_in(self, conn: sa.Connection, rep: FinishReport) -> ReportResult:
        """``report_finished`` in the caller's transaction (group commit)."""
        ...

    def report_started_in(
        self, conn: sa.Connection, job_id: str, attempt: int, token: str, worker_id: str
    ) -> ReportResult:
        """``report_started`` in the caller's transaction (group commit)."""
        ...


class SchedulerState(Protocol):
    """The leader's published state by key (the queue board, the pool demand): what
    ``server/services/board.py`` and ``demand.py`` read and write."""

    def get_scheduler_state(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The published data and when it was written (``None``: nothing published yet)."""
        ...

    def put_scheduler_state(self, key: str, data: dict[str, Any]) -> None:
        """Publish ``data`` under ``key`` (replacing what was there)."""
        ...


class DispatchStore(Protocol):
    """What ``server/services/dispatch.py`` uses of the store."""

    def dependency_artifacts(self, deps: list[dict[str, Any]], limit: int = ...) -> list[tuple[str, Any]]:
        """The artifacts of the latest attempt of each job in ``deps`` (an array: of each of its tasks), as
        (job id, artifact row) in dependency and path order; at most ``limit``."""
        ...

    def gang_stops(self, gang_id: str) -> list[WorkerCommand]:
        """The gang's ranks flagged to stop, as commands for their workers (pushed at once; the heartbeat's
        ``worker_commands`` repeats them until they stop)."""
        ...

    def get_job(self, job_id: str) -> Job | None:
        """The job with its attempts (and a gang's other ranks), if it exists."""
        ...

    def leased_to(self, worker_id: str) -> list[Lease]:
        """Every attempt a worker holds: re-sent on each lease-stream (re)connect."""
        ...


class FilesStore(Protocol):
    """What ``server/services/files.py`` uses of the store."""

    def artifacts(self, job_id: str, attempt: int | None = ...) -> list[ArtifactRecord]:
        """A job's artifacts (one attempt's, if given), by attempt and path."""
        ...


class FleetStore(Protocol):
    """What ``server/services/fleet.py`` uses of the store."""

    def command_events(
        self, cursor: int | None, limit: int = ...
    ) -> tuple[list[tuple[int, str, str | None, str | None]], int]:
        """The job events after ``cursor`` (at most ``limit``), each as (id, job, the job's gang, the worker
        now holding it), and the newest event id; None: only the newest id (a first read). What a replica
        follows to know whose commands may have changed (``CommandGate``)."""
        ...

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status that is not final (a gang counts once; an array as its tasks).
        Finished jobs are not counted: with millions of them (until retention prunes them) each scrape would
        read the whole table; ``trainyard_jobs_submitted_total`` counts them."""
        ...

    def drain_worker(self, ref: str, deadline: float | None) -> Worker | None:
        """Mark a worker (by id or name) DRAINING: nothing new is placed there, and from ``deadline`` on its
        running attempts are preempted (None: its agent stops them itself). Draining again only brings a
        deadline forward. None when no live worker has that id or name."""
        ...

    def list_workers(self, include_dead: bool = ...) -> list[Worker]:
        """Workers by name."""
        ...

    def live_attempts(self, worker_id: str | None = ...) -> list[LiveAttempt]:
        """Every live attempt (or one worker's), as the reconciler checks them."""
        ...

    def outbox_lag(self) -> int:
        """How many rows wait unsent."""
        ...

    def pending_by_pool_team(self) -> list[tuple[str | None, str, int]]:
        """(pool, team, pending jobs) for each pool and team with any."""
        ...

    def register_worker(
        self,
        *,
        name: str,
        hostname: str,
        pool: str,
        region: str | None,
        cpu: float,
        memory: int,
        gpu: int,
        gpu_type: str | None,
        labels: dict[str, str],
        version: str | None,
    ) -> tuple[Worker, str]:
        """Register (or re-register) by name; returns the worker and a fresh worker credential."""
        ...

    def running_by_team(self) -> list[tuple[str, int, float, int, int]]:
        """(team, jobs, cpu, memory, gpu) over live jobs."""
        ...

    def set_cached_uris(self, worker_id: str, uris: Sequence[str]) -> None:
        """Record the dataset URIs a worker's local cache holds (sent when they change, not per beat)."""
        ...

    def set_checkpoint_times(self, times: Sequence[tuple[str, int, float]]) -> None:
        """Record when running attempts last checkpointed ((job, attempt, unix s); only forward)."""
        ...

    def worker_commands(self, worker_id: str, running: Sequence[tuple[str, int, str]]) -> list[WorkerCommand]:
        """What a worker must do about the attempts it says it runs, and about cancels it holds."""
        ...


class FluentbitStore(Protocol):
    """What ``server/services/fluentbit.py`` uses of the store."""

    def add_log_chunk(self, chunk: LogChunk, token: str) -> bool:
        """Index an uploaded log chunk (idempotent by sequence number); False: not that attempt's token."""
        ...

    def get_job(self, job_id: str) -> Job | None:
        """The job with its attempts (and a gang's other ranks), if it exists."""
        ...

    def log_chunks(self, job_id: str, attempt: int) -> list[LogChunk]:
        """An attempt's log chunks in byte order."""
        ...


class HealthStore(Protocol):
    """What ``server/services/health.py`` uses of the store."""

    def ping(self) -> bool:
        """True when the database answers; raises when it does not."""
        ...


class JobsStore(Protocol):
    """What ``server/services/jobs.py`` uses of the store."""

    def worker_pools(self) -> frozenset[str]:
        """The pools that workers not dead serve (draining ones included)."""
        ...

    def array_tasks(
        self, array_id: str, limit: int = ..., cursor: str | None = ..., statuses: Iterable[str] = ...
    ) -> tuple[list[Job], str | None]:
        """A page of the array's tasks by index (without their attempts), and the next page's cursor (None:
        the last page). ValueError: a cursor this API did not give out."""
        ...

    def cancel(self, job_id: str, actor: str) -> Job:
        """PENDING jobs end at once; leased ones go to CANCELLING until their worker stops them. An array:
        every task not finished (``ArrayRepo.stopping_tasks``: those whose worker must stop)."""
        ...

    def events_since(self, after_id: int, team: str | None = ..., limit: int = ...) -> list[Event]:
        """Every job's events after ``after_id`` (one team's, if given), oldest first."""
        ...

    def get_job(self, job_id: str) -> Job | None:
        """The job with its attempts (and a gang's other ranks), if it exists."""
        ...

    def insert_job_in(
        self, conn: sa.Connection, user: User, spec: JobSpec, idempotency_key: str | None
    ) -> Job:
        """Insert a new PENDING job; raises IntegrityError when the user's idempotency key is taken."""
        ...

    def job_events(self, job_id: str, after_id: int = ...) -> list[Event]:
        """The job's state history after event ``after_id``, oldest first."""
        ...

    def last_event_id(self) -> int:
        """The newest event's id (0: none yet)."""
        ...

    def list_jobs(
        self, flt: JobFilter, limit: int = ..., cursor: str | None = ...
    ) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first, and the cursor of the next page (None: the last page)."""
        ...

    def replay(self, user: User, spec: JobSpec, idempotency_key: str) -> SubmitResult:
        """The answer to a submission whose Idempotency-Key is taken: the same job, or a conflict."""
        ...

    def restart(self, job_id: str, actor: str) -> Job:
        """Run a finished job again as a new attempt (a gang with all its ranks)."""
        ...

    def stopping_tasks(self, array_id: str) -> list[Job]:
        """The array's tasks a cancel left CANCELLING, with their leases (their workers must be told)."""
        ...


class LogsStore(Protocol):
    """What ``server/services/logs.py`` uses of the store."""

    def log_chunks(self, job_id: str, attempt: int) -> list[LogChunk]:
        """An attempt's log chunks in byte order."""
        ...


class LogsearchStore(Protocol):
    """What ``server/services/logsearch.py`` uses of the store."""

    clock: Callable[[], float]
    """The store's clock (seconds since the epoch; a fake one in tests)."""

    def defer_log_chunk(self, chunk: QueuedChunk, now: float) -> None:
        """Put a chunk that could not be read now at the back of the queue, so that it holds up no other."""
        ...

    def get_job(self, job_id: str) -> Job | None:
        """The job with its attempts (and a gang's other ranks), if it exists."""
        ...

    def index_log_chunk(self, chunk: QueuedChunk, team: str, lines: Sequence[IndexedLine]) -> bool:
        """Take ``chunk`` off the queue and index its lines (replacing lines indexed before at the same
        offsets: a neighbour's indexing may have seen only part of a line). False: the chunk was no longer
        queued (another indexer took it), and nothing changed."""
        ...

    def log_chunks(self, job_id: str, attempt: int) -> list[LogChunk]:
        """An attempt's log chunks in byte order."""
        ...

    def log_index_queue_length(self) -> int:
        """How many chunks wait to be indexed."""
        ...

    def pending_log_chunks(self, limit: int) -> list[QueuedChunk]:
        """Up to ``limit`` queued chunks, oldest first."""
        ...

    def search_logs(self, query: LogQuery) -> list[LogHit]:
        """Lines holding the phrase that the caller may see, newest indexed first (index id order)."""
        ...


class ReconcileStore(Protocol):
    """What ``server/services/reconcile.py`` uses of the store."""

    def expire_overdue(self, now: float, grace: float) -> list[str]:
        """Backstop for a worker that failed to enforce max_runtime: close such jobs as TIMED_OUT."""
        ...

    def finish_stuck_cancels(self, now: float, after: float) -> list[str]:
        """A cancel the worker never confirmed (worker wedged) ends as CANCELLED; its lease is void."""
        ...

    def list_workers(self, include_dead: bool = ...) -> list[Worker]:
        """Workers by name."""
        ...

    def live_attempts(self, worker_id: str | None = ...) -> list[LiveAttempt]:
        """Every live attempt (or one worker's), as the reconciler checks them."""
        ...

    def lose_attempt(self, job_id: str, attempt: int, token: str, reason: str) -> bool:
        """Close a RUNNING attempt that its live worker no longer runs as LOST (retried as an infrastructure
        failure). False when the attempt moved on meanwhile."""
        ...

    def mark_worker_dead(self, worker_id: str, reason: str = ...) -> list[str]:
        """The worker is gone: its live attempts become LOST and their jobs go back under the retry policy."""
        ...

    def requeue_undelivered(self, job_id: str, attempt: int, token: str) -> bool:
        """Close a SCHEDULED attempt its worker never acknowledged as an infrastructure failure."""
        ...

    def touch_workers(self, seen: dict[str, float]) -> None:
        """Persist last-heartbeat times (batched; the hot path keeps them in the cache)."""
        ...


class RetentionStore(Protocol):
    """What ``server/services/retention.py`` uses of the store."""

    @property
    def archive(self) -> ArchiveRepo:
        """The archive of pruned jobs (retention)."""
        ...

    clock: Callable[[], float]
    """The store's clock (seconds since the epoch; a fake one in tests)."""

    def delete_log_index(self, job_ids: Sequence[str]) -> int:
        """Remove the jobs' indexed lines and queued chunks (retention calls this when it archives them);
        returns how many lines went."""
        ...

    def outbox_prune_sent(self, before: float, limit: int = ...) -> int:
        """Delete up to ``limit`` rows the bus had before ``before``; how many went."""
        ...

    def outbox_sent_before(self, before: float) -> int:
        """How many sent rows ``outbox_prune_sent`` would delete (a dry run's count)."""
        ...


class SchedulingStore(SchedulerState, Protocol):
    """What ``server/services/scheduling.py`` uses of the store."""

    def checkpoint_mark(self) -> str | None:
        """The current checkpoint mark (None: no checkpoint time was ever written)."""
        ...

    def checkpoint_times(self) -> dict[str, float]:
        """When each live attempt last checkpointed (job id -> unix s; those that never did are left out).
        Heartbeats write these without an event row, so the leader's picture refreshes them with this narrow
        read every few seconds rather than with each cycle's changes."""
        ...

    def lease(self, placements: Iterable[Placement]) -> list[Lease]:
        """Apply the scheduler's placements in one transaction; each is guarded by status and attempt."""
        ...

    def list_teams(self) -> list[Team]:
        """Every team, by name."""
        ...

    def resolve_dependencies(self) -> Resolution:
        """Release, end or explain every waiting job (one read when none waits; the leader calls it each
        cycle)."""
        ...

    def scheduling_changes(self, cursor: int, also: Collection[str] = ...) -> SchedulingRead:
        """The rows of the jobs with events after ``cursor`` (plus ``also``: jobs changed without an event,
        e.g. released from a dependency wait), as they are now, in one read, with the rows each change may
        have moved too (``_related``)."""
        ...

    def scheduling_full_read(self) -> SchedulingRead:
        """Every schedulable pending job (whatever its ``not_before``) and every live attempt, with the change
        cursor as of the same read (the newest ``job_events`` id: every job move writes one)."""
        ...

    def scheduling_workers(self) -> list[tuple[Any, ...]]:
        """The workers that are not dead, by name, with what the scheduler weighs: (id, cpu, memory, gpu,
        gpu_type, pool, region, status, registered_at, labels, cached_uris), the last two as JSON text (plain
        tuples: the leader keeps each worker's decoded form until its tuple changes)."""
        ...

    def set_pending_reasons(self, reasons: dict[str, str]) -> None:
        """Record why each pending job waits (jobs that left PENDING meanwhile are left alone). Jobs with the
        same reason are written together: the thousands of tasks of an array waiting for its cap share one
        text."""
        ...


class UsageStore(Protocol):
    """What ``server/services/usage.py`` uses of the store."""

    def list_teams(self) -> list[Team]:
        """Every team, by name."""
        ...

    @property
    def usage(self) -> UsageRepo:
        """Prices, budgets and spending (usage and budgets)."""
        ...
