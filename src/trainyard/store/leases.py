"""Leases: the scheduler's snapshot of pending and running jobs, and applying its placements.

Owns the PENDING → SCHEDULED move and the creation of ``job_attempts`` rows: each lease is a new
attempt with a new random lease token (the fencing token every later report must carry).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from trainyard.model.ids import new_lease_token
from trainyard.model.records import LiveAttempt
from trainyard.model.states import JobStatus, sources_of
from trainyard.store.db import Db
from trainyard.store.errors import ConcurrentChange
from trainyard.store.gangs import gang_port, member_id
from trainyard.store.records import Lease, Placement
from trainyard.store.rows import PENDING_COLUMNS, RUNNING_COLUMNS, PendingRow, RunningRow
from trainyard.store.schema import job_attempts, job_events, jobs, workers
from trainyard.store.transitions import LIVE_NAMES, MOVE, record_event

_LEASABLE = sources_of(JobStatus.SCHEDULED)
_IDS_PER_STATEMENT = 500
_INSERT_ATTEMPT = job_attempts.insert()
_member = jobs.alias("member")
_CURRENT_ATTEMPT = sa.and_(job_attempts.c.job_id == jobs.c.id, job_attempts.c.number == jobs.c.attempt)
_GANG_IDLE = sa.or_(
    jobs.c.gang_id.is_(None),
    ~sa.exists().where(
        _member.c.gang_id == jobs.c.id,
        _member.c.replica_rank > 0,
        _member.c.status != JobStatus.PENDING.value,
    ),
)
"""A pending rank 0 is schedulable once every other rank of its gang is idle (PENDING) again."""


_CHANGES_PER_READ = 20_000
"""Events one incremental read takes at most; more than that and a full reread is cheaper."""


class SchedulingRead(NamedTuple):
    """What the leader's picture is built from (a full read) or brought up to date with (changes).

    ``pending`` keeps a job's ``not_before`` beside its row: the picture holds backed-off jobs and
    lets them in when their time comes, where a full read filters them by the clock. ``changed``:
    the jobs whose rows were reread (None: a full read, everything). ``event_ids``: the change
    cursor's ids this read covered, in order (for gap detection). ``cursor``: the newest one seen."""

    cursor: int
    pending: list[tuple[PendingRow, float | None]]
    running: list[RunningRow]
    changed: frozenset[str] | None
    event_ids: list[int]
    overflow: bool = False


def resume_key(conn: sa.Connection, job_id: str) -> str | None:
    """The newest checkpoint an earlier attempt of the job left, if any."""
    return conn.execute(
        sa.select(job_attempts.c.checkpoint_key)
        .where(job_attempts.c.job_id == job_id, job_attempts.c.checkpoint_key.is_not(None))
        .order_by(job_attempts.c.number.desc())
        .limit(1)
    ).scalar()


class LeaseRepo:
    """What the scheduler reads each cycle, and the leases it grants."""

    def __init__(self, db: Db) -> None:
        self._db = db

    # ---- the snapshot --------------------------------------------------------------------------
    def pending_for_scheduling(self, now: float, limit: int = 50_000) -> list[PendingRow]:
        """Pending jobs with every field the scheduler weighs (columns only: no spec parsing)."""
        q = (
            sa.select(*PENDING_COLUMNS)
            .where(jobs.c.status == JobStatus.PENDING.value)
            .where(sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now))
            # A gang is scheduled as its rank 0, once every other rank is idle again (the ranks
            # of its last attempt may still be stopping).
            .where(jobs.c.replica_rank == 0)
            # An array's parent never runs (its tasks do); a job waiting for its dependencies is
            # released by ``DependencyRepo.resolve`` once they are met.
            .where(jobs.c.array_tasks.is_(None), jobs.c.awaiting_dependencies == sa.false())
            .where(_GANG_IDLE)
            .order_by(jobs.c.priority.desc(), jobs.c.queued_at, jobs.c.id)
            .limit(limit)
        )
        with self._db.read() as conn:
            return list(map(PendingRow._make, conn.execute(q)))

    def running_for_scheduling(self) -> list[RunningRow]:
        """Every live attempt with what it holds and what losing it would cost (for preemption)."""
        q = (
            sa.select(*RUNNING_COLUMNS)
            .select_from(jobs.join(job_attempts, _CURRENT_ATTEMPT))
            .where(jobs.c.status.in_(LIVE_NAMES))
        )
        with self._db.read() as conn:
            return list(map(RunningRow._make, conn.execute(q)))

    # ---- the leader's picture: full reads and changes since a cursor -----------------------------
    def scheduling_full_read(self) -> SchedulingRead:
        """Every schedulable pending job (whatever its ``not_before``) and every live attempt, with the
        change cursor as of the same read (the newest ``job_events`` id: every job move writes one)."""
        with self._db.read() as conn:
            cursor = conn.execute(sa.select(sa.func.max(job_events.c.id))).scalar() or 0
            pending = self._pending_rows(conn, None)
            running = self._running_rows(conn, None)
        return SchedulingRead(int(cursor), pending, running, None, [])

    def scheduling_changes(self, cursor: int, also: Collection[str] = ()) -> SchedulingRead:
        """The rows of the jobs with events after ``cursor`` (plus ``also``: jobs changed without an
        event, e.g. released from a dependency wait), as they are now, in one read, with the rows
        each change may have moved too (``_related``)."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(job_events.c.id, job_events.c.job_id)
                .where(job_events.c.id > cursor)
                .order_by(job_events.c.id)
                .limit(_CHANGES_PER_READ + 1)
            ).all()
            if len(rows) > _CHANGES_PER_READ:
                return SchedulingRead(cursor, [], [], frozenset(), [], overflow=True)
            ids = {r.job_id for r in rows} | set(also)
            ids |= self._related(conn, ids)
            changed = sorted(ids)
            pending = self._pending_rows(conn, changed) if changed else []
            running = self._running_rows(conn, changed) if changed else []
        event_ids = [int(r.id) for r in rows]
        return SchedulingRead(max(event_ids, default=cursor), pending, running, frozenset(ids), event_ids)

    @staticmethod
    def _related(conn: sa.Connection, ids: Collection[str]) -> set[str]:
        """The rows whose picture a change of ``ids`` may change too: a gang rank's rank 0 (whether a
        gang is schedulable depends on its ranks) and an array parent's tasks (written with the
        parent's event alone when the array is submitted)."""
        out: set[str] = set()
        listed = list(ids)
        for i in range(0, len(listed), _IDS_PER_STATEMENT):
            chunk = listed[i : i + _IDS_PER_STATEMENT]
            out.update(
                g
                for (g,) in conn.execute(
                    sa.select(jobs.c.gang_id).where(
                        _among(conn, jobs.c.id, chunk), jobs.c.gang_id.is_not(None)
                    )
                )
            )
            out.update(
                t for (t,) in conn.execute(sa.select(jobs.c.id).where(_among(conn, jobs.c.array_id, chunk)))
            )
        return out

    @staticmethod
    def _pending_rows(conn: sa.Connection, ids: list[str] | None) -> list[tuple[PendingRow, float | None]]:
        """``pending_for_scheduling``'s rows without its clock filter (``not_before`` alongside)."""
        base = (
            sa.select(*PENDING_COLUMNS, jobs.c.not_before)
            .where(jobs.c.status == JobStatus.PENDING.value, jobs.c.replica_rank == 0)
            .where(jobs.c.array_tasks.is_(None), jobs.c.awaiting_dependencies == sa.false())
            .where(_GANG_IDLE)
        )
        out: list[tuple[PendingRow, float | None]] = []
        for chunk in _chunks(ids):
            q = base if chunk is None else base.where(_among(conn, jobs.c.id, chunk))
            out.extend((PendingRow._make(r[:-1]), r[-1]) for r in conn.execute(q))
        return out

    @staticmethod
    def _running_rows(conn: sa.Connection, ids: list[str] | None) -> list[RunningRow]:
        base = (
            sa.select(*RUNNING_COLUMNS)
            .select_from(jobs.join(job_attempts, _CURRENT_ATTEMPT))
            .where(jobs.c.status.in_(LIVE_NAMES))
        )
        out: list[RunningRow] = []
        for chunk in _chunks(ids):
            q = base if chunk is None else base.where(_among(conn, jobs.c.id, chunk))
            out.extend(map(RunningRow._make, conn.execute(q)))
        return out

    def checkpoint_times(self) -> dict[str, float]:
        """When each live attempt last checkpointed (job id -> unix s; those that never did are left
        out). Heartbeats write these without an event row, so the leader's picture refreshes them
        with this narrow read every few seconds rather than with each cycle's changes."""
        q = (
            sa.select(jobs.c.id, job_attempts.c.last_checkpoint_at)
            .select_from(jobs.join(job_attempts, _CURRENT_ATTEMPT))
            .where(jobs.c.status.in_(LIVE_NAMES), job_attempts.c.last_checkpoint_at.is_not(None))
        )
        with self._db.read() as conn:
            return {r.id: float(r.last_checkpoint_at) for r in conn.execute(q)}

    def live_attempts(self, worker_id: str | None = None) -> list[LiveAttempt]:
        """Every live attempt (or one worker's), as the reconciler checks them."""
        q = (
            sa.select(
                job_attempts.c.job_id,
                job_attempts.c.number,
                job_attempts.c.worker_id,
                job_attempts.c.lease_token,
                jobs.c.status,
                jobs.c.cpu,
                jobs.c.memory,
                job_attempts.c.gpu_indices,
                job_attempts.c.scheduled_at,
            )
            .select_from(job_attempts.join(jobs, jobs.c.id == job_attempts.c.job_id))
            .where(jobs.c.status.in_(LIVE_NAMES))
            .where(jobs.c.attempt == job_attempts.c.number)
        )
        if worker_id is not None:
            q = q.where(job_attempts.c.worker_id == worker_id)
        with self._db.read() as conn:
            return [
                LiveAttempt(
                    job_id=r.job_id,
                    attempt=r.number,
                    worker_id=r.worker_id,
                    lease_token=r.lease_token,
                    status=JobStatus(r.status),
                    cpu=r.cpu,
                    memory=r.memory,
                    gpu_indices=tuple(r.gpu_indices),
                    scheduled_at=r.scheduled_at,
                )
                for r in conn.execute(q)
            ]

    def set_pending_reasons(self, reasons: dict[str, str]) -> None:
        """Record why each pending job waits (jobs that left PENDING meanwhile are left alone). Jobs
        with the same reason are written together: the thousands of tasks of an array waiting for
        its cap share one text."""
        if not reasons:
            return
        by_reason: dict[str, list[str]] = {}
        for job_id, reason in reasons.items():
            by_reason.setdefault(reason, []).append(job_id)
        with self._db.tx() as conn:
            for reason, ids in by_reason.items():
                for i in range(0, len(ids), _IDS_PER_STATEMENT):
                    conn.execute(
                        jobs.update()
                        .where(
                            _among(conn, jobs.c.id, ids[i : i + _IDS_PER_STATEMENT]),
                            jobs.c.status == JobStatus.PENDING.value,
                        )
                        .values(pending_reason=reason)
                    )
        self._db.changed(list(reasons))  # no event row, but the job's view changed

    # ---- leasing -------------------------------------------------------------------------------
    def lease(self, placements: Iterable[Placement]) -> list[Lease]:
        """Apply the scheduler's placements in one transaction; each is guarded by status and attempt.

        The rows are read locked (SQLite: the transaction is the only writer; PostgreSQL: FOR UPDATE),
        so every guard that holds at the read holds at the write, and the whole cycle's moves and
        attempt rows go in one executemany each instead of two statements per job."""
        now = self._db.clock()
        placements = list(placements)
        if not placements:
            return []
        leases: list[Lease] = []
        moves: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        with self._db.tx() as conn:
            query = sa.select(jobs).where(jobs.c.id.in_([member_id(p.job_id, p.rank) for p in placements]))
            if self._db.write_lock is None:
                query = query.with_for_update()
            rows = {r.id: r for r in conn.execute(query)}
            masters = self._gang_masters(conn, placements)
            for p, row in self._leasable(placements, rows, now):
                token = new_lease_token()
                moves.append(_lease_move(row, p, token, now))
                record_event(
                    conn,
                    job_id=row.id,
                    team=row.team,
                    type_=JobStatus.SCHEDULED.value.lower(),
                    src=row.status,
                    dst=JobStatus.SCHEDULED.value,
                    attempt=row.attempt + 1,
                    data={"worker": p.worker_id, "gpu_indices": list(p.gpu_indices)},
                    now=now,
                )
                attempts.append(_attempt_values(row, p, token, now))
                leases.append(self._granted(conn, row, p, token, masters))
            if moves:
                result = conn.execute(MOVE, moves)
                if self._db.engine.dialect.supports_sane_multi_rowcount and result.rowcount != len(moves):
                    # Cannot happen with the rows locked; if it does, write nothing rather than guess.
                    raise ConcurrentChange("a leased job changed while the lease was applied")
                conn.execute(_INSERT_ATTEMPT, attempts)
        return leases

    def _granted(
        self, conn: sa.Connection, row: sa.Row[Any], p: Placement, token: str, masters: dict[str, str]
    ) -> Lease:
        """The lease of ``row``'s next attempt, as its worker's assignment needs it."""
        number = row.attempt + 1
        return Lease(
            row.id,
            number,
            p.worker_id,
            token,
            p.gpu_indices,
            row.spec,
            row.name,
            row.team,
            row.user_name,
            # Every rank resumes from the gang's checkpoint: rank 0 writes it.
            resume_key(conn, p.job_id) if row.attempt else None,
            row.cpu,
            row.memory,
            row.max_runtime,
            rank=p.rank,
            world_size=p.world_size,
            master_addr=masters.get(p.job_id, ""),
            master_port=gang_port(p.job_id, number) if p.world_size > 1 else 0,
            gang_id=row.gang_id,
            array_id=row.array_id,
            array_index=row.array_index,
        )

    def _leasable(
        self, placements: list[Placement], rows: dict[str, sa.Row[Any]], now: float
    ) -> Iterator[tuple[Placement, sa.Row[Any]]]:
        """The placements that may be leased, with their rows: a gang only when every rank's row is
        there, idle and at the attempt the scheduler saw (all ranks or none)."""
        by_job: dict[str, list[Placement]] = {}
        for p in placements:
            by_job.setdefault(p.job_id, []).append(p)
        for job_id, group in by_job.items():
            head = rows.get(job_id)
            if head is None or head.attempt != group[0].expected_attempt:
                continue
            if head.not_before is not None and head.not_before > now:
                continue
            ranks = {p.rank: p for p in group}  # a job placed twice in one cycle is leased once
            world = max(head.replicas, 1)
            if sorted(ranks) != list(range(world)):
                continue
            chosen = [(ranks[k], rows.get(member_id(job_id, k))) for k in range(world)]
            if all(
                r is not None and r.attempt == head.attempt and JobStatus(r.status) in _LEASABLE
                for _, r in chosen
            ):
                yield from ((p, r) for p, r in chosen if r is not None)

    def _gang_masters(self, conn: sa.Connection, placements: list[Placement]) -> dict[str, str]:
        """Each gang's rendezvous host: the hostname of the worker its rank 0 goes to."""
        rank0 = {p.job_id: p.worker_id for p in placements if p.world_size > 1 and p.rank == 0}
        if not rank0:
            return {}
        hosts: dict[str, str] = {
            r.id: r.hostname
            for r in conn.execute(
                sa.select(workers.c.id, workers.c.hostname).where(workers.c.id.in_(set(rank0.values())))
            )
        }
        return {job: hosts.get(worker, "") for job, worker in rank0.items()}

    def leased_to(self, worker_id: str) -> list[Lease]:
        """Every attempt a worker holds: re-sent on each lease-stream (re)connect."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(jobs, job_attempts.c.gpu_indices)
                .select_from(jobs.join(job_attempts, _CURRENT_ATTEMPT))
                .where(jobs.c.worker_id == worker_id, jobs.c.status.in_(LIVE_NAMES))
                .order_by(jobs.c.id)
            ).all()
            return [
                Lease(
                    r.id,
                    r.attempt,
                    worker_id,
                    r.lease_token,
                    tuple(r.gpu_indices),
                    r.spec,
                    r.name,
                    r.team,
                    r.user_name,
                    resume_key(conn, r.id) if r.attempt > 1 else None,
                    r.cpu,
                    r.memory,
                    r.max_runtime,
                    array_id=r.array_id,
                    array_index=r.array_index,
                )
                for r in rows
            ]


def _among(conn: sa.Connection, column: sa.Column[Any], ids: list[str]) -> sa.ColumnElement[bool]:
    """``column IN ids``. On PostgreSQL ``column = ANY(array)``, the ids one parameter: an IN list
    has SQLAlchemy render a placeholder and psycopg dump a parameter for each id, and its SQL
    differs with the count, so it is never prepared (the leader's picture reads a cycle's changes
    this way: a few hundred ids per cycle under a stream of submissions)."""
    if conn.dialect.name != "postgresql":
        return column.in_(ids)
    return column == sa.any_(sa.bindparam(None, ids, type_=postgresql.ARRAY(sa.Text)))


def _chunks(ids: list[str] | None) -> Iterator[list[str] | None]:
    """``ids`` in IN-clause sized pieces (None: one unrestricted query)."""
    if ids is None:
        yield None
        return
    for i in range(0, len(ids), _IDS_PER_STATEMENT):
        yield ids[i : i + _IDS_PER_STATEMENT]


def _lease_move(row: sa.Row[Any], p: Placement, token: str, now: float) -> dict[str, Any]:
    """The guarded PENDING → SCHEDULED update of ``row`` for one executemany of ``MOVE``."""
    return {
        "status": JobStatus.SCHEDULED.value,
        "updated_at": now,
        "attempt": row.attempt + 1,
        "tries": row.tries + 1,
        "lease_token": token,
        "worker_id": p.worker_id,
        "pending_reason": None,
        "not_before": None,
        "gang_abort": None,
        "g_id": row.id,
        "g_status": row.status,
        "g_attempt": row.attempt,
    }


def _attempt_values(row: sa.Row[Any], p: Placement, token: str, now: float) -> dict[str, Any]:
    """The new attempt's ``job_attempts`` row."""
    return {
        "job_id": row.id,
        "number": row.attempt + 1,
        "worker_id": p.worker_id,
        "lease_token": token,
        "status": JobStatus.SCHEDULED.value,
        "gpu_indices": list(p.gpu_indices),
        "scheduled_at": now,
    }
