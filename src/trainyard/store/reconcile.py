"""The reconciler's writes: attempts the platform ends because their worker cannot or did not.

Each closes attempts through ``AttemptRepo.close_attempt`` with a ``platform_report``: overdue runs
(TIMED_OUT), assignments never acknowledged (INFRA), attempts a live worker no longer runs (LOST)
and cancels a worker never confirmed (CANCELLED).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.store.attempts import AttemptRepo, platform_report
from trainyard.store.db import Db
from trainyard.store.schema import jobs
from trainyard.store.transitions import LIVE_NAMES, job_row


class ReconcileRepo:
    """Backstops for attempts whose worker failed to end them. Every public method is one
    transaction (``expire_overdue`` and ``finish_stuck_cancels`` read first, outside it)."""

    def __init__(self, db: Db, attempts: AttemptRepo) -> None:
        self._db = db
        self._attempts = attempts

    def expire_overdue(self, now: float, grace: float) -> list[str]:
        """Backstop for a worker that failed to enforce max_runtime: close such jobs as TIMED_OUT."""
        overdue = sa.and_(
            jobs.c.status == JobStatus.RUNNING.value,
            jobs.c.deadline.is_not(None),
            jobs.c.deadline + grace < now,
        )
        return self._close_where(overdue, AttemptOutcome.TIMED_OUT, lambda _: "exceeded max_runtime", now)

    def finish_stuck_cancels(self, now: float, after: float) -> list[str]:
        """A cancel the worker never confirmed (worker wedged) ends as CANCELLED; its lease is void."""
        stuck = sa.or_(
            sa.and_(jobs.c.status == JobStatus.CANCELLING.value, jobs.c.cancel_requested_at < now - after),
            # A gang rank told to stop (its gang's attempt ended) that never did holds the gang back.
            sa.and_(
                jobs.c.status.in_(LIVE_NAMES),
                jobs.c.gang_abort.is_not(None),
                jobs.c.updated_at < now - after,
            ),
        )
        return self._close_where(stuck, AttemptOutcome.CANCELLED, lambda row: row.reason or "cancelled", now)

    def _close_where(
        self,
        condition: sa.ColumnElement[bool],
        outcome: AttemptOutcome,
        reason: Callable[[sa.Row[Any]], str],
        now: float,
    ) -> list[str]:
        """Close the current attempt of every job matching ``condition``. Looked up with a read first,
        so the reconciler's idle cycles never take the write lock from the hot path."""
        with self._db.read() as conn:
            ids = [r.id for r in conn.execute(sa.select(jobs.c.id).where(condition))]
        if not ids:
            return []
        closed = []
        with self._db.tx() as conn:
            # Re-read under the write lock: a job that moved on meanwhile no longer matches.
            for row in conn.execute(sa.select(jobs).where(jobs.c.id.in_(ids), condition)).all():
                self._attempts.close_attempt(conn, row, platform_report(row, outcome, reason(row)), now)
                closed.append(row.id)
        return closed

    def requeue_undelivered(self, job_id: str, attempt: int, token: str) -> bool:
        """Close a SCHEDULED attempt its worker never acknowledged as an infrastructure failure."""
        reason = "the worker never acknowledged the assignment"
        return self._close_one(job_id, attempt, token, JobStatus.SCHEDULED, AttemptOutcome.INFRA, reason)

    def lose_attempt(self, job_id: str, attempt: int, token: str, reason: str) -> bool:
        """Close a RUNNING attempt that its live worker no longer runs as LOST (retried as an
        infrastructure failure). False when the attempt moved on meanwhile."""
        return self._close_one(job_id, attempt, token, JobStatus.RUNNING, AttemptOutcome.LOST, reason)

    def _close_one(
        self,
        job_id: str,
        attempt: int,
        token: str,
        status: JobStatus,
        outcome: AttemptOutcome,
        reason: str,
    ) -> bool:
        """Close the job's attempt if it is still that attempt, in ``status``, under that lease."""
        now = self._db.clock()
        with self._db.tx() as conn:
            row = job_row(conn, job_id)
            if (
                row is None
                or row.status != status.value
                or row.attempt != attempt
                or row.lease_token != token
            ):
                return False
            self._attempts.close_attempt(conn, row, platform_report(row, outcome, reason), now)
        return True
