"""Gangs: jobs of several replicas that are leased, stopped and ended together.

A gang is its rank 0 (the job, which the retry policy and preemption act on) plus member rows
``<id>-<rank>`` for ranks 1..N-1 in the ``jobs`` table. Rank 0 decides: when it ends, the other ranks
are stopped, and the gang's attempt ends as rank 0's did (as Kubeflow's default success policy: the
master's exit is the job's). When another rank ends badly first, rank 0 is stopped with that rank's
outcome. A member row between attempts waits PENDING ("idle"), unscheduled; the gang is leased again
only once every rank is idle.

A gang's attempt is all-or-nothing while its collective work runs: a rank preempted or lost then
takes the step every rank was in, so the whole gang is requeued (as Slurm requeues a whole job and
JobSet recreates every child job). But a rank exits 0 only after the last collective step, in which
every rank took part: once one member rank has succeeded in an attempt, a later preemption or loss
of another member rank loses only that rank's own tail. It is recorded with its outcome, the gang is
not stopped, and rank 0 still decides, so a rank that succeeded never runs that work again because
of another's eviction. (A rank that *fails* still stops the gang: the retry policy decides then, and
a retry reruns every rank on purpose. Rank 0 itself preempted or lost requeues the gang: it holds the
gang's result, and the next attempt resumes from its checkpoint.)
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa

from trainyard.model.states import TERMINAL, AttemptOutcome, JobStatus
from trainyard.store.db import Db
from trainyard.store.records import FinishReport, WorkerCommand
from trainyard.store.schema import job_attempts, jobs
from trainyard.store.transitions import (
    LIVE_NAMES,
    MOVE,
    AttemptEnd,
    end_attempt_row,
    folded_start,
    job_row,
    record_event,
)

_ATTEMPT_STATUS = {
    AttemptOutcome.SUCCEEDED: JobStatus.SUCCEEDED,
    AttemptOutcome.FAILED: JobStatus.FAILED,
    AttemptOutcome.CANCELLED: JobStatus.CANCELLED,
    AttemptOutcome.TIMED_OUT: JobStatus.TIMED_OUT,
    AttemptOutcome.START_FAILED: JobStatus.FAILED,
    AttemptOutcome.INFRA: JobStatus.FAILED,
    AttemptOutcome.PREEMPTED: JobStatus.PREEMPTED,
    AttemptOutcome.LOST: JobStatus.LOST,
}


_INFRA_ENDINGS = (AttemptOutcome.PREEMPTED, AttemptOutcome.LOST)
"""A rank's endings that are not its job's doing (a reclaim, a drain, a dead worker)."""


def gang_port(gang_id: str, attempt: int) -> int:
    """The gang's MASTER_PORT: fixed per attempt (every rank computes the same), spread over
    20000-29999 so gangs sharing a rank-0 host rarely collide."""
    digest = hashlib.sha256(f"{gang_id}:{attempt}".encode()).digest()
    return 20000 + int.from_bytes(digest[:4], "big") % 10000


def member_id(gang_id: str, rank: int) -> str:
    """Rank ``rank``'s row of gang ``gang_id`` (rank 0 is the gang's job itself)."""
    return gang_id if rank == 0 else f"{gang_id}-{rank}"


def stop_command(r: Any) -> WorkerCommand:
    """The command that stops a rank flagged with ``gang_abort``."""
    # A gang that will run again (a rank preempted or lost) stops through the preempt path, so rank 0
    # uploads its checkpoint and the next attempt resumes from it.
    again = r.gang_abort.get("outcome") in (AttemptOutcome.PREEMPTED.value, AttemptOutcome.LOST.value)
    kind = "preempt" if again else "cancel"
    return WorkerCommand(
        kind, r.id, r.attempt, r.lease_token or "", str(r.gang_abort.get("reason", "")), r.worker_id
    )


class GangRepo:
    """The member rows of gangs and how they follow rank 0."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def members(self, conn: sa.Connection, gang_id: str) -> list[sa.Row[Any]]:
        """Ranks 1..N-1 of a gang, in rank order."""
        return list(
            conn.execute(
                sa.select(jobs)
                .where(jobs.c.gang_id == gang_id, jobs.c.replica_rank > 0)
                .order_by(jobs.c.replica_rank)
            )
        )

    def close_member(self, conn: sa.Connection, row: Any, report: FinishReport, now: float) -> JobStatus:
        """End a member rank's attempt: the row goes idle (or ends with its finished gang), and a
        rank that ended badly stops the rest of the gang's attempt."""
        head = job_row(conn, row.gang_id)
        head_status = JobStatus(head.status) if head is not None else JobStatus.CANCELLED
        same_attempt = head is not None and head.attempt == row.attempt
        outcome = report.outcome
        if row.gang_abort is not None and outcome is not AttemptOutcome.SUCCEEDED:
            outcome = AttemptOutcome.CANCELLED  # stopped because the gang's attempt ended
        final = head_status if head_status in TERMINAL else JobStatus.PENDING
        folded = folded_start(row)
        values: dict[str, Any] = {
            "exit_code": report.exit_code,
            "lease_token": None,
            "deadline": None,
            "worker_id": None,
            "gang_abort": None,
            "reason": report.reason,
        }
        if final in TERMINAL:
            values["finished_at"] = now
        if folded is not None:
            values["started_at"] = folded
        data = {"outcome": outcome.value, "exit_code": report.exit_code}
        self.set_member(conn, row, final, now, values, data)
        end = AttemptEnd.of(
            row, report, status=_ATTEMPT_STATUS[outcome], outcome=outcome, reason=report.reason, now=now
        )
        end_attempt_row(conn, end)
        if (
            outcome is not AttemptOutcome.SUCCEEDED
            and same_attempt
            and head is not None
            and head_status in (JobStatus.SCHEDULED, JobStatus.RUNNING)
            and head.gang_abort is None
            and not (outcome in _INFRA_ENDINGS and self.a_rank_succeeded(conn, row.gang_id, row.attempt))
        ):
            self._abort(
                conn, head, f"rank {row.replica_rank} {outcome.value}: {report.reason or ''}", outcome, now
            )
        return final

    def a_rank_succeeded(self, conn: sa.Connection, gang_id: str, attempt: int) -> bool:
        """Whether a member rank of the gang has ended ``attempt`` by succeeding."""
        hit = conn.execute(
            sa.select(job_attempts.c.number)
            .select_from(job_attempts.join(jobs, jobs.c.id == job_attempts.c.job_id))
            .where(
                jobs.c.gang_id == gang_id,
                jobs.c.replica_rank > 0,
                job_attempts.c.number == attempt,
                job_attempts.c.outcome == AttemptOutcome.SUCCEEDED.value,
            )
            .limit(1)
        ).first()
        return hit is not None

    def _abort(
        self, conn: sa.Connection, head: sa.Row[Any], reason: str, outcome: AttemptOutcome, now: float
    ) -> None:
        """A rank ended badly: flag rank 0 to end its attempt as that rank did, and stop the others."""
        abort = {"outcome": outcome.value, "reason": reason}
        conn.execute(
            jobs.update()
            .where(jobs.c.id == head.id, jobs.c.attempt == head.attempt)
            .values(gang_abort=abort, updated_at=now)
        )
        self.stop_members(conn, head.id, head.attempt, abort, now)

    def set_member(
        self,
        conn: sa.Connection,
        row: Any,
        to: JobStatus,
        now: float,
        values: dict[str, Any],
        data: dict[str, Any],
    ) -> None:
        """A member row follows its gang rather than the job state machine (a rank that finished
        waits idle while rank 0 runs on): guarded by status and attempt only."""
        conn.execute(
            MOVE,
            {
                "status": to.value,
                "updated_at": now,
                **values,
                "g_id": row.id,
                # A folded start (see ``AttemptRepo.start``) was not written: the row still says SCHEDULED.
                "g_status": JobStatus.SCHEDULED.value if hasattr(row, "folded_start") else row.status,
                "g_attempt": row.attempt,
            },
        )
        record_event(
            conn,
            job_id=row.id,
            team=row.team,
            type_="replica_ended",
            src=row.status,
            dst=to.value,
            attempt=row.attempt,
            data={**data, "gang": row.gang_id, "rank": row.replica_rank},
            now=now,
        )

    def stop_members(
        self, conn: sa.Connection, gang_id: str, attempt: int, abort: dict[str, Any], now: float
    ) -> None:
        """Flag the gang's live ranks of ``attempt`` to stop (``worker_commands`` and ``gang_stops``
        tell their workers)."""
        conn.execute(
            jobs.update()
            .where(
                jobs.c.gang_id == gang_id,
                jobs.c.replica_rank > 0,
                jobs.c.attempt == attempt,
                jobs.c.status.in_(LIVE_NAMES),
                jobs.c.gang_abort.is_(None),
            )
            .values(gang_abort=abort, updated_at=now)
        )

    def end_gang_attempt(
        self, conn: sa.Connection, gang_id: str, attempt: int, final: JobStatus, now: float
    ) -> None:
        """Rank 0's attempt ended as ``final``: stop the other ranks still running it, and let idle
        ones end with the gang when it is over."""
        self.stop_members(conn, gang_id, attempt, {"outcome": "cancelled", "reason": "rank 0 ended"}, now)
        if final in TERMINAL:
            for m in self.members(conn, gang_id):
                if m.status == JobStatus.PENDING.value:
                    self.set_member(
                        conn,
                        m,
                        final,
                        now,
                        {"finished_at": now, "pending_reason": None},
                        {"gang_ended": final.value},
                    )
        # The head is between attempts (or done): its stop flag has served.
        conn.execute(jobs.update().where(jobs.c.id == gang_id).values(gang_abort=None))

    def gang_stops(self, gang_id: str) -> list[WorkerCommand]:
        """The gang's ranks flagged to stop, as commands for their workers (pushed at once; the
        heartbeat's ``worker_commands`` repeats them until they stop)."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(jobs).where(
                    sa.or_(jobs.c.gang_id == gang_id, jobs.c.id == gang_id),
                    jobs.c.status.in_(LIVE_NAMES),
                    jobs.c.gang_abort.is_not(None),
                )
            ).all()
        return [stop_command(r) for r in rows]
