"""Jobs: submit (idempotent), read, list, cancel and restart, and their event history.

Owns the creation of ``jobs`` rows (a gang's member rows with its rank 0) and the moves a user asks
for; the moves a worker or the platform causes are in ``attempts.py``, ``leases.py`` and
``reconcile.py``.
"""

from __future__ import annotations

import base64
from typing import Any

import sqlalchemy as sa

from trainyard.model.ids import new_job_id
from trainyard.model.records import Attempt, Event, Job, User
from trainyard.model.spec import JobSpec, spec_fingerprint
from trainyard.model.states import TERMINAL, JobStatus
from trainyard.store.arrays import cancel_array, counts_of, insert_rows, task_moved, task_rows
from trainyard.store.db import Db, insert_later
from trainyard.store.errors import Conflict, IdempotencyConflict, NotFound, StoreError
from trainyard.store.gangs import GangRepo, member_id
from trainyard.store.records import JobFilter, SubmitResult
from trainyard.store.rows import attempt_record, event_record, job_record, replica_record
from trainyard.store.schema import job_attempts, job_events, jobs
from trainyard.store.tenancy import TenancyRepo
from trainyard.store.transitions import TOPIC_SUBMITTED, job_row, move, record_event

_INSERT_JOB = jobs.insert()


def _encode_cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("cursor is not one this API returned") from None
    if not raw.startswith("j") or len(raw) > 32:
        raise ValueError("cursor is not one this API returned")
    return raw


def _job_values(
    job_id: str, user: User, spec: JobSpec, team: str, idempotency_key: str | None, now: float
) -> dict[str, Any]:
    """A new PENDING job's row."""
    base = spec.canonical()  # dumped once: the fingerprint and the stored spec both come from it
    return dict(
        id=job_id,
        name=spec.name,
        user_name=user.name,
        team=team,
        status=JobStatus.PENDING.value,
        priority=spec.priority.rank,
        pool=spec.pool,
        cpu=spec.resources.cpu,
        memory=spec.resources.memory,
        gpu=spec.resources.gpu,
        gpu_type=spec.resources.gpu_type,
        max_runtime=spec.max_runtime,
        preemptible=spec.preemptible,
        replicas=spec.replicas,
        region=spec.data.region if spec.data else None,
        require_region=bool(spec.data and spec.data.require_region),
        data_uris=list(spec.data.uris) if spec.data and spec.data.uris else None,
        spec={**base, "team": team},
        spec_hash=spec_fingerprint(base),
        idempotency_key=idempotency_key,
        created_at=now,
        updated_at=now,
        queued_at=now,
        awaiting_dependencies=bool(spec.depends_on),
    )


def _new_job(row: dict[str, Any]) -> Job:
    """The ``Job`` a submission just inserted as ``row``."""
    now = row["created_at"]
    return Job(
        id=row["id"],
        name=row["name"],
        user=row["user_name"],
        team=row["team"],
        status=JobStatus.PENDING,
        priority=row["priority"],
        pool=row["pool"],
        spec=row["spec"],
        created_at=now,
        updated_at=now,
        queued_at=now,
        started_at=None,
        finished_at=None,
        attempt=0,
        tries=0,
        worker_id=None,
        exit_code=None,
        reason=None,
        pending_reason=None,
        not_before=None,
        gang_id=row.get("gang_id"),
        array_tasks=row.get("array_tasks"),
        array_counts={JobStatus.PENDING.value: row["array_tasks"]} if row.get("array_tasks") else None,
        awaiting_dependencies=row["awaiting_dependencies"],
    )


class JobRepo:
    """Jobs as users see them. Every public method is one transaction, except the ``_in`` ones,
    which run in the caller's."""

    def __init__(self, db: Db, tenancy: TenancyRepo, gangs: GangRepo) -> None:
        self._db = db
        self._tenancy = tenancy
        self._gangs = gangs

    # ---- submit --------------------------------------------------------------------------------
    def submit(self, user: User, spec: JobSpec, idempotency_key: str | None = None) -> SubmitResult:
        """Accept a job as PENDING; with an idempotency key, a replay returns the first job."""
        try:
            # The common case has no prior job under the key: insert and let the unique index
            # catch a replay, rather than paying a lookup on every submission.
            with self._db.tx() as conn:
                job = self.insert_job_in(conn, user, spec, idempotency_key)
        except sa.exc.IntegrityError:
            # The key was used before (a replay, or a concurrent request that won the race).
            if idempotency_key is None:
                raise
            return self.replay(user, spec, idempotency_key)
        return SubmitResult(job=job, created=True)

    def replay(self, user: User, spec: JobSpec, idempotency_key: str) -> SubmitResult:
        """The answer to a submission whose Idempotency-Key is taken: the same job, or a conflict."""
        with self._db.read() as conn:
            prior = conn.execute(
                sa.select(jobs.c.id, jobs.c.spec_hash).where(
                    jobs.c.user_name == user.name, jobs.c.idempotency_key == idempotency_key
                )
            ).first()
            if prior is None:
                raise StoreError("idempotency key vanished while replaying")
            if prior.spec_hash != spec.fingerprint():
                raise IdempotencyConflict("Idempotency-Key was already used with a different job spec")
            job = self.load_job(conn, prior.id)
            assert job is not None
            return SubmitResult(job=job, created=False)

    def insert_job_in(
        self, conn: sa.Connection, user: User, spec: JobSpec, idempotency_key: str | None
    ) -> Job:
        """Insert a new PENDING job; raises IntegrityError when the user's idempotency key is taken."""
        now = self._db.clock()
        team = spec.team or user.team
        job_id = new_job_id()
        row = _job_values(job_id, user, spec, team, idempotency_key, now)
        if not self._tenancy.knows_team(team):
            self._tenancy.ensure_team(conn, team)
        if spec.replicas > 1:
            row["gang_id"] = job_id
        tasks: list[dict[str, Any]] = []
        if spec.array is not None:
            # The parent is bookkeeping (never scheduled); each index is a task row of its own,
            # all written with one executemany.
            row["array_limit"] = spec.array.parallelism
            tasks = task_rows(row, spec)
            row["array_tasks"] = len(tasks)
        if tasks or spec.replicas > 1:  # rows that refer to this one follow at once
            conn.execute(_INSERT_JOB, row)
        else:
            insert_later(conn, _INSERT_JOB, row)
        insert_rows(conn, tasks)
        if spec.replicas > 1:
            # Ranks 1..N-1: hidden rows that the gang's lease and ending move with rank 0.
            conn.execute(
                _INSERT_JOB,
                [
                    {**row, "id": member_id(job_id, k), "replica_rank": k, "idempotency_key": None}
                    for k in range(1, spec.replicas)
                ],
            )
        record_event(
            conn,
            job_id=job_id,
            team=team,
            type_="submitted",
            src=None,
            dst=JobStatus.PENDING.value,
            attempt=0,
            data={"user": user.name, "name": spec.name, **({"tasks": len(tasks)} if tasks else {})},
            now=now,
            topic=TOPIC_SUBMITTED,
        )
        self._tenancy.remember_team(team)
        return _new_job(row)

    # ---- read ----------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> Job | None:
        """The job with its attempts (and a gang's other ranks), if it exists."""
        with self._db.read() as conn:
            return self.load_job(conn, job_id)

    def load_job(self, conn: sa.Connection, job_id: str) -> Job | None:
        """``get_job`` in the caller's transaction."""
        row = job_row(conn, job_id)
        if row is None:
            return None
        atts = conn.execute(
            sa.select(job_attempts).where(job_attempts.c.job_id == job_id).order_by(job_attempts.c.number)
        ).all()
        replicas = None
        if row.gang_id == row.id:
            replicas = [replica_record(m) for m in self._gangs.members(conn, row.id)]
        counts = counts_of(conn, [row.id])[row.id] if row.array_tasks is not None else None
        return job_record(row, [attempt_record(a) for a in atts], replicas, counts)

    def list_jobs(
        self, flt: JobFilter, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first, and the cursor of the next page (None: the last page)."""
        # A gang is listed once, as its rank 0; an array once, as its parent (with its task counts).
        q = (
            sa.select(jobs)
            .where(jobs.c.replica_rank == 0, jobs.c.array_index.is_(None))
            .order_by(jobs.c.id.desc())
            .limit(limit + 1)
        )
        if flt.status:
            q = q.where(jobs.c.status.in_(list(flt.status)))
        if flt.user:
            q = q.where(jobs.c.user_name == flt.user)
        if flt.team:
            q = q.where(jobs.c.team == flt.team)
        if flt.visible_team is not None:
            q = q.where(jobs.c.team == flt.visible_team)
        if flt.name:
            q = q.where(jobs.c.name == flt.name)
        if cursor:
            q = q.where(jobs.c.id < _decode_cursor(cursor))
        with self._db.read() as conn:
            rows = conn.execute(q).all()
            page = rows[:limit]
            ids = [r.id for r in page]
            by_job: dict[str, list[Attempt]] = {i: [] for i in ids}
            if ids:
                for a in conn.execute(
                    sa.select(job_attempts)
                    .where(job_attempts.c.job_id.in_(ids))
                    .order_by(job_attempts.c.job_id, job_attempts.c.number)
                ):
                    by_job[a.job_id].append(attempt_record(a))
            counts = counts_of(conn, [r.id for r in page if r.array_tasks is not None])
        next_cursor = _encode_cursor(page[-1].id) if len(rows) > limit else None
        return [job_record(r, by_job[r.id], None, counts.get(r.id)) for r in page], next_cursor

    # ---- cancel and restart --------------------------------------------------------------------
    def _gang_head(self, conn: sa.Connection, job_id: str) -> tuple[str, sa.Row[Any]]:
        """The job's row, or its gang's rank 0 when it is another rank; NotFound when missing."""
        row = job_row(conn, job_id)
        if row is None:
            raise NotFound(job_id)
        if row.gang_id is not None and row.gang_id != row.id:
            job_id, row = row.gang_id, job_row(conn, row.gang_id)
            if row is None:
                raise NotFound(job_id)
        return job_id, row

    def cancel(self, job_id: str, actor: str) -> Job:
        """PENDING jobs end at once; leased ones go to CANCELLING until their worker stops them. An
        array: every task not finished (``ArrayRepo.stopping_tasks``: those whose worker must stop)."""
        now = self._db.clock()
        with self._db.tx() as conn:
            job_id, row = self._gang_head(conn, job_id)  # a rank: cancel its gang
            if row.array_tasks is not None:
                cancel_array(conn, row, actor, now)  # the parent follows its tasks
            else:
                self._cancel_job(conn, row, actor, now)
            job = self.load_job(conn, job_id)
        assert job is not None
        return job

    def _cancel_job(self, conn: sa.Connection, row: sa.Row[Any], actor: str, now: float) -> None:
        """``cancel`` of one job (a gang: with its ranks; an array's task: its parent follows)."""
        job_id, status = row.id, JobStatus(row.status)
        data = {"by": actor}
        if status is JobStatus.PENDING:
            move(
                conn,
                row,
                JobStatus.CANCELLED,
                data=data,
                now=now,
                values={"finished_at": now, "reason": f"cancelled by {actor}", "pending_reason": None},
            )
            if row.array_id is not None:
                task_moved(conn, row, JobStatus.CANCELLED, now, ran=False)
        elif status in (JobStatus.SCHEDULED, JobStatus.RUNNING):
            move(
                conn,
                row,
                JobStatus.CANCELLING,
                data=data,
                now=now,
                values={"cancel_requested_at": now, "reason": f"cancelled by {actor}"},
            )
            conn.execute(
                job_attempts.update()
                .where(job_attempts.c.job_id == job_id, job_attempts.c.number == row.attempt)
                .values(status=JobStatus.CANCELLING.value)
            )
        if row.gang_id is not None:
            stop = {"outcome": "cancelled", "reason": f"cancelled by {actor}"}
            if status is JobStatus.PENDING:
                self._gangs.end_gang_attempt(conn, job_id, row.attempt, JobStatus.CANCELLED, now)
            elif status in (JobStatus.SCHEDULED, JobStatus.RUNNING):
                self._gangs.stop_members(conn, job_id, row.attempt, stop, now)

    def restart(self, job_id: str, actor: str) -> Job:
        """Run a finished job again as a new attempt (a gang with all its ranks)."""
        now = self._db.clock()
        with self._db.tx() as conn:
            job_id, row = self._gang_head(conn, job_id)  # a rank: restart its gang
            if JobStatus(row.status) not in TERMINAL:
                raise Conflict(f"job {job_id} is {row.status}; only a finished job can be restarted")
            if row.array_tasks is not None:
                raise Conflict(
                    f"job {job_id} is an array: restart its tasks one by one (yard restart {job_id}-INDEX)"
                )
            res = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == row.status)
                .values(
                    status=JobStatus.PENDING.value,
                    updated_at=now,
                    queued_at=now,
                    tries=0,
                    started_at=None,
                    finished_at=None,
                    deadline=None,
                    exit_code=None,
                    reason=None,
                    lease_token=None,
                    worker_id=None,
                    not_before=None,
                    cancel_requested_at=None,
                    # Its dependencies are looked at again (met at once, or never: it ends again);
                    # an array's task waited with its array, and its array's wait is over.
                    awaiting_dependencies=bool(row.spec.get("depends_on")) and row.array_id is None,
                )
            )
            if res.rowcount != 1:
                raise Conflict(f"job {job_id} changed while restarting; try again")
            if row.array_id is not None:
                task_moved(conn, row, JobStatus.PENDING, now, ran=True)  # the array is open again
            if row.gang_id is not None:
                self._reset_members(conn, job_id, now)
            record_event(
                conn,
                job_id=job_id,
                team=row.team,
                type_="restarted",
                src=row.status,
                dst=JobStatus.PENDING.value,
                attempt=row.attempt,
                data={"by": actor},
                now=now,
            )
            job = self.load_job(conn, job_id)
        assert job is not None
        return job

    def _reset_members(self, conn: sa.Connection, gang_id: str, now: float) -> None:
        """A restarted gang's finished ranks go idle again."""
        conn.execute(
            jobs.update()
            # Ranks still stopping from the last run go idle when they report (GangRepo.close_member).
            .where(
                jobs.c.gang_id == gang_id,
                jobs.c.replica_rank > 0,
                jobs.c.status.in_([t.value for t in TERMINAL]),
            )
            .values(
                status=JobStatus.PENDING.value,
                updated_at=now,
                finished_at=None,
                exit_code=None,
                reason=None,
                lease_token=None,
                worker_id=None,
                gang_abort=None,
            )
        )

    # ---- events --------------------------------------------------------------------------------
    def job_events(self, job_id: str, after_id: int = 0) -> list[Event]:
        """The job's state history after event ``after_id``, oldest first."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(job_events)
                .where(job_events.c.job_id == job_id, job_events.c.id > after_id)
                .order_by(job_events.c.id)
            ).all()
        return [event_record(r) for r in rows]

    def events_since(self, after_id: int, team: str | None = None, limit: int = 1000) -> list[Event]:
        """Every job's events after ``after_id`` (one team's, if given), oldest first."""
        q = sa.select(job_events).where(job_events.c.id > after_id).order_by(job_events.c.id).limit(limit)
        if team is not None:
            q = q.where(job_events.c.team == team)
        with self._db.read() as conn:
            return [event_record(r) for r in conn.execute(q)]

    def last_event_id(self) -> int:
        """The newest event's id (0: none yet)."""
        with self._db.read() as conn:
            return int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.max(job_events.c.id), 0))).scalar_one()
            )
