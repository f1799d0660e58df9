"""Aggregate views: job counts for the queue and fleet pages, and what the scheduling leader
publishes for every replica to read (the queue board). Owns the ``scheduler_state`` table."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from trainyard.model.states import TERMINAL, JobStatus
from trainyard.store.db import Db
from trainyard.store.schema import jobs, scheduler_state
from trainyard.store.transitions import LIVE_NAMES

_NOT_FINAL = [s.value for s in JobStatus if s not in TERMINAL]


class ViewRepo:
    """Counts over jobs, and the leader's published state."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status that is not final (a gang counts once; an array as its
        tasks). Finished jobs are not counted: with millions of them (until retention prunes them)
        each scrape would read the whole table; ``trainyard_jobs_submitted_total`` counts them."""
        with self._db.read() as conn:
            return {
                r[0]: int(r[1])
                for r in conn.execute(
                    # A gang counts once (its rank 0), as it is listed; an array's tasks are jobs
                    # that run, its parent is not.
                    sa.select(jobs.c.status, sa.func.count())
                    .where(
                        jobs.c.status.in_(_NOT_FINAL),
                        jobs.c.replica_rank == 0,
                        jobs.c.array_tasks.is_(None),
                    )
                    .group_by(jobs.c.status)
                )
            }

    def pending_by_pool_team(self) -> list[tuple[str | None, str, int]]:
        """(pool, team, pending jobs) for each pool and team with any."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(jobs.c.pool, jobs.c.team, sa.func.count())
                .where(
                    jobs.c.status == JobStatus.PENDING.value,
                    jobs.c.replica_rank == 0,
                    jobs.c.array_tasks.is_(None),
                )
                .group_by(jobs.c.pool, jobs.c.team)
            ).all()
        return [(r[0], r[1], int(r[2])) for r in rows]

    def running_by_team(self) -> list[tuple[str, int, float, int, int]]:
        """(team, jobs, cpu, memory, gpu) over live jobs."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(
                    jobs.c.team,
                    sa.func.count(),
                    sa.func.sum(jobs.c.cpu),
                    sa.func.sum(jobs.c.memory),
                    sa.func.sum(jobs.c.gpu),
                )
                .where(jobs.c.status.in_(LIVE_NAMES), jobs.c.array_tasks.is_(None))
                .group_by(jobs.c.team)
            ).all()
        return [(r[0], int(r[1]), float(r[2] or 0), int(r[3] or 0), int(r[4] or 0)) for r in rows]

    def put_scheduler_state(self, key: str, data: dict[str, Any]) -> None:
        """Publish ``data`` under ``key`` (replacing what was there)."""
        now = self._db.clock()
        with self._db.tx() as conn:
            res = conn.execute(
                scheduler_state.update().where(scheduler_state.c.key == key).values(data=data, updated_at=now)
            )
            if res.rowcount == 0:
                conn.execute(scheduler_state.insert().values(key=key, data=data, updated_at=now))

    def get_scheduler_state(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The published data and when it was written (``None``: nothing published yet)."""
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(scheduler_state.c.data, scheduler_state.c.updated_at).where(
                    scheduler_state.c.key == key
                )
            ).first()
        return None if row is None else (dict(row.data), row.updated_at)
