"""The state store on SQLAlchemy Core: one implementation for PostgreSQL and SQLite.

``SqlStore`` is the facade the control plane holds: it builds the transaction core (``db.Db``) and
one repository per topic over it, and offers every repository method under the name callers use.
Where things live:

- ``db.py``: engine, transactions, group commit (``apply_batch``), ``StoreConfig``;
- ``transitions.py``: the guarded ``move``, and the event, outbox and attempt rows written with it;
- ``jobs.py``: submit, read, list, cancel, restart, event history;
- ``leases.py``: the scheduler's snapshot and the leases it grants;
- ``attempts.py``: a leased attempt's start and end, and every other ending (``close_attempt``);
- ``gangs.py``: the member ranks of gangs and how they follow rank 0;
- ``arrays.py``: job arrays: their task rows, how the parent follows its tasks, cancels, pages;
- ``dependencies.py``: jobs waiting for others, released or ended by the leader each cycle;
- ``archive.py``: retention: finished jobs archived to object storage, then deleted; their index;
- ``fleet.py``: workers, heartbeats, drains, and the commands workers get;
- ``reconcile.py``: attempts the platform ends when their worker does not;
- ``tenancy.py``: teams, users, tokens, secrets, the audit trail;
- ``logs.py``: the log-chunk and artifact index; ``logsearch.py``: the log search index;
  ``outbox.py``: the outbox relay and replay check;
- ``rates.py``: token buckets for the rate limits while Redis is down;
- ``views.py``: counts for the queue pages and the leader's published state;
- ``rows.py``: typed rows and record conversions; ``records.py``: what callers pass and get back;
- ``ports.py``: the ``Protocol`` each consumer needs; ``errors.py``: the exceptions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from trainyard.store.archive import ArchiveRepo
from trainyard.store.arrays import ArrayRepo
from trainyard.store.attempts import AttemptRepo
from trainyard.store.db import Db, OnCommit, create_engine, normalize_url
from trainyard.store.dependencies import DependencyRepo, Resolution
from trainyard.store.errors import ConcurrentChange, Conflict, IdempotencyConflict, NotFound, StoreError
from trainyard.store.fleet import FleetRepo
from trainyard.store.gangs import GangRepo, gang_port, member_id
from trainyard.store.jobs import JobRepo
from trainyard.store.leases import LeaseRepo
from trainyard.store.logs import LogRepo
from trainyard.store.logsearch import LogSearchRepo
from trainyard.store.outbox import OutboxRepo
from trainyard.store.rates import RateRepo
from trainyard.store.reconcile import ReconcileRepo
from trainyard.store.records import (
    DEFAULT_MAX_PREEMPTIONS,
    FinishReport,
    JobFilter,
    Lease,
    Placement,
    ReportResult,
    StoreConfig,
    SubmitResult,
    WorkerCommand,
)
from trainyard.store.rows import PendingRow, RunningRow
from trainyard.store.tenancy import TenancyRepo
from trainyard.store.transitions import EVENT_SCHEMA_VERSION, TOPIC_EVENTS, TOPIC_SUBMITTED
from trainyard.store.usage import UsageRepo
from trainyard.store.views import ViewRepo

__all__ = [
    "DEFAULT_MAX_PREEMPTIONS",
    "EVENT_SCHEMA_VERSION",
    "TOPIC_EVENTS",
    "TOPIC_SUBMITTED",
    "ConcurrentChange",
    "Conflict",
    "FinishReport",
    "IdempotencyConflict",
    "JobFilter",
    "Lease",
    "NotFound",
    "PendingRow",
    "Placement",
    "ReportResult",
    "Resolution",
    "RunningRow",
    "SqlStore",
    "StoreConfig",
    "StoreError",
    "SubmitResult",
    "WorkerCommand",
    "create_engine",
    "gang_port",
    "member_id",
    "normalize_url",
]


class SqlStore:
    """The source of truth. Thread-safe; every public method is one transaction, except the ``_in``
    ones, which run in the caller's (group commit).

    The repositories are public (``store.jobs``, ``store.fleet``, ...) for code that needs one topic;
    the methods below are theirs, bound here under the names callers have always used."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        config: StoreConfig | None = None,
        on_commit: OnCommit | None = None,
        pool_size: int | None = None,
        max_overflow: int | None = None,
    ) -> None:
        self.db = Db(
            url,
            clock=clock,
            config=config,
            on_commit=on_commit,
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
        self.url = self.db.url
        self.engine = self.db.engine
        self.dialect = self.db.dialect
        self.tenancy = TenancyRepo(self.db)
        self.gangs = GangRepo(self.db)
        self.attempts = AttemptRepo(self.db, self.gangs)
        self.jobs = JobRepo(self.db, self.tenancy, self.gangs)
        self.leases = LeaseRepo(self.db)
        self.fleet = FleetRepo(self.db, self.attempts)
        self.reconcile = ReconcileRepo(self.db, self.attempts)
        self.logs = LogRepo(self.db)
        self.outbox = OutboxRepo(self.db)
        self.views = ViewRepo(self.db)
        self.rates = RateRepo(self.db)
        self.arrays = ArrayRepo(self.db)
        self.dependencies = DependencyRepo(self.db)
        self.logsearch = LogSearchRepo(self.db)
        self.archive = ArchiveRepo(self.db)
        self.usage = UsageRepo(self.db)
        self._bind_core()
        self._bind_jobs()
        self._bind_fleet()
        self._bind_tenancy()
        self._bind_records()

    # ---- policy and hooks ----------------------------------------------------------------------
    @property
    def config(self) -> StoreConfig:
        """The policy the store applies."""
        return self.db.config

    @property
    def clock(self) -> Callable[[], float]:
        """The store's clock (unix seconds)."""
        return self.db.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.db.clock = clock

    @property
    def on_commit(self) -> OnCommit | None:
        """Called with the ids of the jobs a transaction changed, once it has committed (or failed
        in doubt): the control plane invalidates its status cache there."""
        return self.db.on_commit

    @on_commit.setter
    def on_commit(self, hook: OnCommit | None) -> None:
        self.db.on_commit = hook

    @property
    def max_preemptions(self) -> int:
        """Free preemptions per job (``StoreConfig.max_preemptions``)."""
        return self.db.config.max_preemptions

    @max_preemptions.setter
    def max_preemptions(self, n: int) -> None:
        # Kept for callers that set it after construction; pass ``config=StoreConfig(...)`` instead.
        self.db.config = dataclasses.replace(self.db.config, max_preemptions=n)

    # ---- the facade ----------------------------------------------------------------------------
    def _bind_core(self) -> None:
        db = self.db
        self.migrate = db.migrate
        self.close = db.close
        self.ping = db.ping
        self.transaction = db.tx
        self._tx = db.tx  # the cache's SQL fallback still uses this name
        self.apply_batch = db.apply_batch

    def _bind_jobs(self) -> None:
        jobs, leases, attempts, gangs, reconcile = (
            self.jobs,
            self.leases,
            self.attempts,
            self.gangs,
            self.reconcile,
        )
        self.submit = jobs.submit
        self.replay = jobs.replay
        self.insert_job_in = jobs.insert_job_in
        self.get_job = jobs.get_job
        self.list_jobs = jobs.list_jobs
        self.cancel = jobs.cancel
        self.restart = jobs.restart
        self.job_events = jobs.job_events
        self.array_tasks = self.arrays.tasks
        self.stopping_tasks = self.arrays.stopping_tasks
        self.resolve_dependencies = self.dependencies.resolve
        self.dependency_artifacts = self.dependencies.dependency_artifacts
        self.events_since = jobs.events_since
        self.last_event_id = jobs.last_event_id
        self.pending_for_scheduling = leases.pending_for_scheduling
        self.running_for_scheduling = leases.running_for_scheduling
        self.live_attempts = leases.live_attempts
        self.lease = leases.lease
        self.set_pending_reasons = leases.set_pending_reasons
        self.leased_to = leases.leased_to
        self.scheduling_full_read = leases.scheduling_full_read
        self.scheduling_changes = leases.scheduling_changes
        self.checkpoint_times = leases.checkpoint_times
        self.report_started = attempts.report_started
        self.report_started_in = attempts.report_started_in
        self.report_finished = attempts.report_finished
        self.report_finished_in = attempts.report_finished_in
        self.gang_stops = gangs.gang_stops
        self.expire_overdue = reconcile.expire_overdue
        self.requeue_undelivered = reconcile.requeue_undelivered
        self.lose_attempt = reconcile.lose_attempt
        self.finish_stuck_cancels = reconcile.finish_stuck_cancels

    def _bind_fleet(self) -> None:
        fleet, views = self.fleet, self.views
        self.register_worker = fleet.register_worker
        self.worker_by_token = fleet.worker_by_token
        self.get_worker = fleet.get_worker
        self.drain_worker = fleet.drain_worker
        self.scheduling_workers = fleet.scheduling_workers
        self.worker_pools = fleet.worker_pools
        self.command_events = fleet.command_events
        self.checkpoint_mark = fleet.checkpoint_mark
        self.list_workers = fleet.list_workers
        self.set_checkpoint_times = fleet.set_checkpoint_times
        self.set_cached_uris = fleet.set_cached_uris
        self.touch_workers = fleet.touch_workers
        self.record_heartbeat = fleet.record_heartbeat
        self.heartbeat_at = fleet.heartbeat_at
        self.heartbeats_at = fleet.heartbeats_at
        self.take_rate_tokens = self.rates.take_rate_tokens
        self.mark_worker_dead = fleet.mark_worker_dead
        self.worker_commands = fleet.worker_commands
        self.count_by_status = views.count_by_status
        self.pending_by_pool_team = views.pending_by_pool_team
        self.running_by_team = views.running_by_team
        self.put_scheduler_state = views.put_scheduler_state
        self.get_scheduler_state = views.get_scheduler_state

    def _bind_tenancy(self) -> None:
        tenancy = self.tenancy
        self.create_user = tenancy.create_user
        self.provision_user = tenancy.provision_user
        self.authenticate = tenancy.authenticate
        self.token_user = tenancy.token_user
        self.get_user = tenancy.get_user
        self.create_token = tenancy.create_token
        self.list_tokens = tenancy.list_tokens
        self.revoke_token = tenancy.revoke_token
        self.audit = tenancy.audit
        self.list_audit = tenancy.list_audit
        self.put_secret = tenancy.put_secret
        self.list_secrets = tenancy.list_secrets
        self.secret_ciphertexts = tenancy.secret_ciphertexts
        self.delete_secret = tenancy.delete_secret
        self.set_team = tenancy.set_team
        self.list_teams = tenancy.list_teams
        self.team_exists = tenancy.team_exists

    def _bind_records(self) -> None:
        logs, outbox = self.logs, self.outbox
        self.attempt_token_ok = logs.attempt_token_ok
        self.add_log_chunk = logs.add_log_chunk
        self.add_log_chunk_in = logs.add_log_chunk_in
        self.log_chunks = logs.log_chunks
        self.artifacts = logs.artifacts
        search = self.logsearch
        self.pending_log_chunks = search.pending_chunks
        self.index_log_chunk = search.index_chunk
        self.defer_log_chunk = search.defer_chunk
        self.log_index_queue_length = search.index_queue_length
        self.search_logs = search.search_logs
        self.delete_log_index = search.delete_log_index
        self.outbox_unsent = outbox.outbox_unsent
        self.outbox_mark_sent = outbox.outbox_mark_sent
        self.outbox_mark_sent_ranges = outbox.outbox_mark_sent_ranges
        self.outbox_lag = outbox.outbox_lag
        self.outbox_prune_sent = outbox.outbox_prune_sent
        self.outbox_sent_before = outbox.outbox_sent_before
        self.outbox_events = outbox.outbox_events
        self.existing_event_ids = outbox.existing_event_ids


if TYPE_CHECKING:
    from trainyard.store import ports

    def _satisfies_the_ports(store: SqlStore) -> None:
        """mypy checks that the facade and each repository offer what their consumers need."""
        repos: tuple[
            ports.Outbox,
            ports.EventLog,
            ports.Tenancy,
            ports.Authenticator,
            ports.Secrets,
            ports.AuditTrail,
            ports.BatchWriter,
            ports.Schema,
            ports.LogIndex,
        ] = (
            store.outbox,
            store.outbox,
            store.tenancy,
            store.tenancy,
            store.tenancy,
            store.tenancy,
            store.db,
            store.db,
            store.logsearch,
        )
        facade: tuple[
            ports.Outbox,
            ports.EventLog,
            ports.Heartbeats,
            ports.Tenancy,
            ports.Authenticator,
            ports.Secrets,
            ports.AuditTrail,
            ports.BatchWriter,
            ports.Schema,
            ports.LogIndex,
        ] = (store, store, store, store, store, store, store, store, store, store)
        del repos, facade
