"""The fleet: workers registering, beating, draining and dying, and what each must do next.

Owns the ``workers`` table. A worker that re-registers or is declared dead loses its live attempts
(closed as LOST through ``AttemptRepo.close_attempt``, which requeues them under the retry policy).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from trainyard.model.ids import hash_token, new_token
from trainyard.model.records import Worker
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.store.attempts import AttemptRepo, platform_report
from trainyard.store.db import Db
from trainyard.store.gangs import stop_command
from trainyard.store.records import WorkerCommand
from trainyard.store.rows import worker_record
from trainyard.store.schema import job_attempts, job_events, jobs, scheduler_state, workers
from trainyard.store.transitions import LIVE_NAMES

_BEAT = (
    workers.update().where(workers.c.id == sa.bindparam("w_id")).values(last_heartbeat=sa.bindparam("w_at"))
)
_SCHEDULING_WORKERS = (
    sa.select(
        workers.c.id,
        workers.c.cpu,
        workers.c.memory,
        workers.c.gpu,
        workers.c.gpu_type,
        workers.c.pool,
        workers.c.region,
        workers.c.status,
        workers.c.registered_at,
        # As text: the leader compares them with what it has and decodes only a changed worker's.
        sa.cast(workers.c.labels, sa.Text).label("labels"),
        sa.cast(workers.c.cached_uris, sa.Text).label("cached_uris"),
    )
    .where(workers.c.status != "DEAD")
    .order_by(workers.c.name)
)
_WORKER_POOLS = sa.select(workers.c.pool).where(workers.c.status != "DEAD").distinct()
CHECKPOINTS_KEY = "checkpoints"
"""The ``scheduler_state`` row whose mark changes whenever checkpoint times are written."""
_TOUCH = (
    workers.update()
    .where(workers.c.id == sa.bindparam("w_id"), workers.c.status != "DEAD")
    .values(last_heartbeat=sa.bindparam("w_at"))
)
_LAST_BEAT = sa.select(workers.c.last_heartbeat).where(workers.c.id == sa.bindparam("w_id"))


class FleetRepo:
    """Workers and their heartbeats. Every public method is one transaction."""

    def __init__(self, db: Db, attempts: AttemptRepo) -> None:
        self._db = db
        self._attempts = attempts

    # ---- registration --------------------------------------------------------------------------
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
        """Register (or re-register) by name; returns the worker and a fresh worker credential.

        A worker that re-registers has restarted, so whatever it held before is gone: its live
        attempts are closed as LOST first, which requeues them under the retry policy.
        """
        now = self._db.clock()
        token = new_token("tyw")
        with self._db.tx() as conn:
            prior = conn.execute(sa.select(workers).where(workers.c.name == name)).first()
            vals = dict(
                hostname=hostname,
                pool=pool,
                region=region,
                cpu=cpu,
                memory=memory,
                gpu=gpu,
                gpu_type=gpu_type,
                labels=labels,
                status="ALIVE",
                version=version,
                token_hash=hash_token(token),
                drain_deadline=None,
                last_heartbeat=now,
            )
            if prior is None:
                worker_id = "w-" + uuid.uuid4().hex[:12]
                conn.execute(workers.insert().values(id=worker_id, name=name, registered_at=now, **vals))
            else:
                worker_id = prior.id
                self._lose_attempts(conn, worker_id, now, "worker restarted")
                conn.execute(
                    workers.update().where(workers.c.id == worker_id).values(registered_at=now, **vals)
                )
            w = conn.execute(sa.select(workers).where(workers.c.id == worker_id)).one()
        return worker_record(w), token

    def worker_by_token(self, token: str) -> Worker | None:
        """The worker a credential belongs to."""
        with self._db.read() as conn:
            row = conn.execute(sa.select(workers).where(workers.c.token_hash == hash_token(token))).first()
        return None if row is None else worker_record(row)

    def get_worker(self, worker_id: str) -> Worker | None:
        """The worker with that id."""
        with self._db.read() as conn:
            row = conn.execute(sa.select(workers).where(workers.c.id == worker_id)).first()
        return None if row is None else worker_record(row)

    def list_workers(self, include_dead: bool = True) -> list[Worker]:
        """Workers by name."""
        q = sa.select(workers).order_by(workers.c.name)
        if not include_dead:
            q = q.where(workers.c.status != "DEAD")
        with self._db.read() as conn:
            return [worker_record(r) for r in conn.execute(q)]

    def scheduling_workers(self) -> list[tuple[Any, ...]]:
        """The workers that are not dead, by name, with what the scheduler weighs: (id, cpu, memory,
        gpu, gpu_type, pool, region, status, registered_at, labels, cached_uris), the last two as
        JSON text (plain tuples: the leader keeps each worker's decoded form until its tuple
        changes)."""
        with self._db.read() as conn:
            return [tuple(r) for r in conn.execute(_SCHEDULING_WORKERS)]

    def worker_pools(self) -> frozenset[str]:
        """The pools that workers not dead serve (draining ones included)."""
        with self._db.read() as conn:
            return frozenset(conn.execute(_WORKER_POOLS).scalars())

    def drain_worker(self, ref: str, deadline: float | None) -> Worker | None:
        """Mark a worker (by id or name) DRAINING: nothing new is placed there, and from ``deadline``
        on its running attempts are preempted (None: its agent stops them itself). Draining again
        only brings a deadline forward. None when no live worker has that id or name."""
        with self._db.tx() as conn:
            row = conn.execute(
                sa.select(workers).where(
                    sa.or_(workers.c.id == ref, workers.c.name == ref), workers.c.status != "DEAD"
                )
            ).first()
            if row is None:
                return None
            if row.drain_deadline is not None and (deadline is None or row.drain_deadline < deadline):
                deadline = row.drain_deadline
            conn.execute(
                workers.update()
                .where(workers.c.id == row.id)
                .values(status="DRAINING", drain_deadline=deadline)
            )
            return worker_record(conn.execute(sa.select(workers).where(workers.c.id == row.id)).one())

    # ---- what workers tell ---------------------------------------------------------------------
    def set_checkpoint_times(self, times: Sequence[tuple[str, int, float]]) -> None:
        """Record when running attempts last checkpointed ((job, attempt, unix s); only forward)."""
        if not times:
            return
        with self._db.tx() as conn:
            for job_id, number, at in times:
                conn.execute(
                    job_attempts.update()
                    .where(
                        job_attempts.c.job_id == job_id,
                        job_attempts.c.number == number,
                        sa.or_(
                            job_attempts.c.last_checkpoint_at.is_(None),
                            job_attempts.c.last_checkpoint_at < at,
                        ),
                    )
                    .values(last_checkpoint_at=at)
                )
        self._mark_checkpoints()

    def _mark_checkpoints(self) -> None:
        """Tell the leader checkpoint times moved (they are written without a job event): a new mark,
        written after the times committed, so a leader that sees it reads them."""
        now = self._db.clock()
        data = {"mark": uuid.uuid4().hex}
        try:
            with self._db.tx() as conn:
                res = conn.execute(
                    scheduler_state.update()
                    .where(scheduler_state.c.key == CHECKPOINTS_KEY)
                    .values(data=data, updated_at=now)
                )
                if res.rowcount == 0:
                    conn.execute(
                        scheduler_state.insert().values(key=CHECKPOINTS_KEY, data=data, updated_at=now)
                    )
        except sa.exc.IntegrityError:
            pass  # another replica wrote the first mark at the same moment: a change all the same

    def checkpoint_mark(self) -> str | None:
        """The current checkpoint mark (None: no checkpoint time was ever written)."""
        with self._db.read() as conn:
            data = conn.execute(
                sa.select(scheduler_state.c.data).where(scheduler_state.c.key == CHECKPOINTS_KEY)
            ).scalar()
        return None if not data else str(data.get("mark"))

    def set_cached_uris(self, worker_id: str, uris: Sequence[str]) -> None:
        """Record the dataset URIs a worker's local cache holds (sent when they change, not per beat)."""
        with self._db.tx() as conn:
            conn.execute(
                workers.update().where(workers.c.id == worker_id).values(cached_uris=sorted(set(uris)))
            )

    def touch_workers(self, seen: dict[str, float]) -> None:
        """Persist last-heartbeat times (batched; the hot path keeps them in the cache)."""
        if not seen:
            return
        # One statement for them all (psycopg pipelines its executemany): a statement each, built
        # and compiled per worker, was a quarter of an idle replica's Python samples at 400 agents.
        with self._db.tx() as conn:
            conn.execute(_TOUCH, [{"w_id": wid, "w_at": at} for wid, at in seen.items()])

    def record_heartbeat(self, worker_id: str, at: float) -> None:
        """Set one worker's last heartbeat (the cache's SQL fallback, while Redis is down)."""
        with self._db.tx() as conn:
            conn.execute(_BEAT, {"w_id": worker_id, "w_at": at})

    def heartbeat_at(self, worker_id: str) -> float | None:
        """One worker's last heartbeat as stored (None: no such worker, or never)."""
        with self._db.engine.connect() as conn:
            at: float | None = conn.execute(_LAST_BEAT, {"w_id": worker_id}).scalar()
        return at

    def heartbeats_at(self, worker_ids: Sequence[str]) -> dict[str, float]:
        """The stored last heartbeat of each of these workers that exists, in one read per thousand."""
        out: dict[str, float] = {}
        ids = list(dict.fromkeys(worker_ids))
        with self._db.engine.connect() as conn:
            # A thousand ids a read: below SQLite's limit on bound parameters.
            for i in range(0, len(ids), 1000):
                chunk = ids[i : i + 1000]
                rows = conn.execute(
                    sa.select(workers.c.id, workers.c.last_heartbeat).where(workers.c.id.in_(chunk))
                )
                out.update({r.id: float(r.last_heartbeat) for r in rows})
        return out

    # ---- death ---------------------------------------------------------------------------------
    def mark_worker_dead(
        self, worker_id: str, reason: str = "worker stopped sending heartbeats"
    ) -> list[str]:
        """The worker is gone: its live attempts become LOST and their jobs go back under the retry policy."""
        now = self._db.clock()
        with self._db.tx() as conn:
            res = conn.execute(
                workers.update()
                .where(workers.c.id == worker_id, workers.c.status != "DEAD")
                .values(status="DEAD")
            )
            if res.rowcount == 0:
                return []
            return self._lose_attempts(conn, worker_id, now, reason)

    def _lose_attempts(self, conn: sa.Connection, worker_id: str, now: float, reason: str) -> list[str]:
        rows = conn.execute(
            sa.select(jobs).where(jobs.c.worker_id == worker_id, jobs.c.status.in_(LIVE_NAMES))
        ).all()
        for row in rows:
            self._attempts.close_attempt(conn, row, platform_report(row, AttemptOutcome.LOST, reason), now)
        return [r.id for r in rows]

    # ---- commands ------------------------------------------------------------------------------
    def command_events(
        self, cursor: int | None, limit: int = 5000
    ) -> tuple[list[tuple[int, str, str | None, str | None]], int]:
        """The job events after ``cursor`` (at most ``limit``), each as (id, job, the job's gang, the
        worker now holding it), and the newest event id; None: only the newest id (a first read).
        What a replica follows to know whose commands may have changed (``CommandGate``)."""
        with self._db.read() as conn:
            newest = int(conn.execute(sa.select(sa.func.max(job_events.c.id))).scalar() or 0)
            if cursor is None or newest <= cursor:
                return [], newest
            rows = conn.execute(
                sa.select(job_events.c.id, job_events.c.job_id, jobs.c.gang_id, jobs.c.worker_id)
                .select_from(job_events.outerjoin(jobs, jobs.c.id == job_events.c.job_id))
                .where(job_events.c.id > cursor)
                .order_by(job_events.c.id)
                .limit(limit)
            ).all()
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows], newest

    def worker_commands(self, worker_id: str, running: Sequence[tuple[str, int, str]]) -> list[WorkerCommand]:
        """What a worker must do about the attempts it says it runs, and about cancels it holds."""
        cmds: list[WorkerCommand] = []
        with self._db.read() as conn:
            rows = _command_rows(conn, worker_id, [j for j, _, _ in running])
        reported = set()
        for job_id, attempt, token in running:
            reported.add((job_id, attempt))
            r = rows.get(job_id)
            if r is None or r.lease_token != token or r.attempt != attempt or r.worker_id != worker_id:
                cmds.append(WorkerCommand("kill_stale", job_id, attempt, token, "lease no longer held"))
            elif r.status == JobStatus.CANCELLING.value:
                cmds.append(WorkerCommand("cancel", job_id, attempt, token, "cancel requested"))
            elif r.gang_abort is not None:
                cmds.append(stop_command(r))
        for r in rows.values():
            if (
                r.status == JobStatus.CANCELLING.value
                and r.worker_id == worker_id
                and (r.id, r.attempt) not in reported
            ):
                cmds.append(WorkerCommand("cancel", r.id, r.attempt, r.lease_token or "", "cancel requested"))
        return cmds


def _command_rows(conn: sa.Connection, worker_id: str, ids: list[str]) -> dict[str, Any]:
    """The rows of the jobs a worker reports running, and of every job it holds that is being
    cancelled, by id."""
    return {
        r.id: r
        for r in conn.execute(
            sa.select(
                jobs.c.id,
                jobs.c.status,
                jobs.c.attempt,
                jobs.c.lease_token,
                jobs.c.worker_id,
                jobs.c.gang_abort,
            ).where(
                sa.or_(
                    jobs.c.id.in_(ids),
                    sa.and_(jobs.c.worker_id == worker_id, jobs.c.status == JobStatus.CANCELLING.value),
                )
            )
        )
    }
