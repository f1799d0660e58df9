"""Attempts: a leased job's start and end as its worker reports them, and every other ending.

Owns the lifecycle of a job's current attempt after the lease (``leases.py`` begins it): the
SCHEDULED → RUNNING move, and ``close_attempt``, the one way an attempt ends (a worker's report, a
lost worker, a timeout, a stuck cancel), which applies the retry policy and the preemption cap and
moves the job on: terminal, or back to PENDING.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from trainyard.model import retry as retry_policy
from trainyard.model.spec import Retry
from trainyard.model.states import LIVE, AttemptOutcome, JobStatus
from trainyard.store.arrays import task_moved
from trainyard.store.db import Db
from trainyard.store.errors import ConcurrentChange
from trainyard.store.gangs import GangRepo
from trainyard.store.records import FinishReport, ReportResult
from trainyard.store.schema import artifacts, job_attempts
from trainyard.store.transitions import (
    UPDATE_ATTEMPT,
    AttemptEnd,
    end_attempt_row,
    folded_start,
    job_row,
    move,
    record_event,
)


def platform_report(row: Any, outcome: AttemptOutcome, reason: str) -> FinishReport:
    """An ending the platform decided for ``row``'s current attempt (its worker was lost, it ran
    past its deadline, a cancel got stuck), in the shape of a worker's report."""
    return FinishReport(
        job_id=row.id,
        attempt=row.attempt,
        lease_token=row.lease_token or "",
        worker_id=row.worker_id or "",
        outcome=outcome,
        reason=reason,
    )


@dataclass
class _Verdict:
    """How an attempt ends, as the store settles it from a report and the job's state."""

    outcome: AttemptOutcome
    reason: str | None
    cancel_requested: bool
    requeue: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Further columns a requeue after a preemption sets (at the cap: no longer preemptible)."""

    def data(self, exit_code: int | None) -> dict[str, Any]:
        """The event data of the move that ends the attempt."""
        return {"outcome": self.outcome.value, "exit_code": exit_code, "reason": self.reason}


class AttemptRepo:
    """Reports of leased attempts, and the closing of attempts."""

    def __init__(self, db: Db, gangs: GangRepo) -> None:
        self._db = db
        self._gangs = gangs

    def leased_row(
        self, conn: sa.Connection, job_id: str, attempt: int, token: str, worker_id: str
    ) -> sa.Row[Any] | None:
        """The job's row if this worker holds the live lease of that attempt, else None."""
        row = job_row(conn, job_id)
        if (
            row is None
            or row.lease_token != token
            or row.attempt != attempt
            or row.worker_id != worker_id
            or JobStatus(row.status) not in LIVE
        ):
            return None
        return row

    # ---- started -------------------------------------------------------------------------------
    def report_started(self, job_id: str, attempt: int, token: str, worker_id: str) -> ReportResult:
        """A worker started a leased attempt's process."""
        with self._db.tx() as conn:
            return self.report_started_in(conn, job_id, attempt, token, worker_id)

    def report_started_in(
        self, conn: sa.Connection, job_id: str, attempt: int, token: str, worker_id: str
    ) -> ReportResult:
        """``report_started`` in the caller's transaction (group commit)."""
        row = self.leased_row(conn, job_id, attempt, token, worker_id)
        if row is None:
            return ReportResult(False, message="lease is not held by this worker")
        status = JobStatus(row.status)
        if status is not JobStatus.SCHEDULED:
            return ReportResult(True, status)  # a repeated report; CANCELLING stays CANCELLING
        self.start(conn, row, worker_id, self._db.clock())
        return ReportResult(True, JobStatus.RUNNING)

    def start(self, conn: sa.Connection, row: Any, worker_id: str, now: float, *, fold: bool = False) -> Any:
        """SCHEDULED → RUNNING for a row already read and checked; returns the row as it is now.

        ``fold``: the attempt also ended (a run of a few milliseconds, reported once): record the
        RUNNING event, but leave the row's writes to the closing UPDATEs, which carry ``started_at``
        (two statements fewer for the shortest jobs)."""
        if fold:
            record_event(
                conn,
                job_id=row.id,
                team=row.team,
                type_=JobStatus.RUNNING.value.lower(),
                src=row.status,
                dst=JobStatus.RUNNING.value,
                attempt=row.attempt,
                data={"worker": worker_id},
                now=now,
            )
            return SimpleNamespace(
                **{**row._asdict(), "status": JobStatus.RUNNING.value, "started_at": now, "folded_start": now}
            )
        move(
            conn,
            row,
            JobStatus.RUNNING,
            lease_token=row.lease_token,
            now=now,
            values={"started_at": now, "deadline": now + row.max_runtime},
            data={"worker": worker_id},
        )
        conn.execute(
            UPDATE_ATTEMPT,
            {"a_job": row.id, "a_number": row.attempt, "status": JobStatus.RUNNING.value, "started_at": now},
        )
        if row.array_id is not None:
            task_moved(conn, row, JobStatus.RUNNING, now, ran=True)
        return SimpleNamespace(**{**row._asdict(), "status": JobStatus.RUNNING.value, "started_at": now})

    # ---- finished ------------------------------------------------------------------------------
    def report_finished(self, rep: FinishReport) -> ReportResult:
        """A worker's report that a leased attempt ended, with its artifacts."""
        with self._db.tx() as conn:
            return self.report_finished_in(conn, rep)

    def report_finished_in(self, conn: sa.Connection, rep: FinishReport) -> ReportResult:
        """``report_finished`` in the caller's transaction (group commit)."""
        now = self._db.clock()
        row = self.leased_row(conn, rep.job_id, rep.attempt, rep.lease_token, rep.worker_id)
        if (
            row is not None
            and row.status == JobStatus.SCHEDULED.value
            and rep.outcome not in (AttemptOutcome.START_FAILED, AttemptOutcome.INFRA)
        ):
            # The worker merged a very short run's STARTED report into this one: record both.
            fold = rep.outcome in (AttemptOutcome.SUCCEEDED, AttemptOutcome.FAILED)
            row = self.start(conn, row, rep.worker_id, now, fold=fold)
        if row is None:
            # A retried report of an attempt we already closed is answered OK, not STALE.
            prior = conn.execute(
                sa.select(job_attempts.c.outcome, job_attempts.c.lease_token).where(
                    job_attempts.c.job_id == rep.job_id, job_attempts.c.number == rep.attempt
                )
            ).first()
            if (
                prior is not None
                and prior.lease_token == rep.lease_token
                and prior.outcome == rep.outcome.value
            ):
                return ReportResult(True, message="already recorded")
            return ReportResult(False, message="lease is not held by this worker")
        for path, size, sha, key in rep.artifacts:
            conn.execute(
                artifacts.insert().values(
                    job_id=rep.job_id,
                    attempt=rep.attempt,
                    path=path,
                    size=size,
                    sha256=sha,
                    object_key=key,
                    created_at=now,
                )
            )
        status = self.close_attempt(conn, row, rep, now)
        return ReportResult(True, status, gang_id=row.gang_id)

    # ---- closing -------------------------------------------------------------------------------
    def close_attempt(self, conn: sa.Connection, row: Any, report: FinishReport, now: float) -> JobStatus:
        """End the job's current attempt as ``report`` says and move the job on: terminal, or back to
        PENDING. ``row`` is the job's row as read in this transaction; the status it ends in is
        returned."""
        if row.gang_id is not None and row.replica_rank > 0:
            return self._gangs.close_member(conn, row, report, now)
        verdict = self._verdict(conn, row, report)
        data = verdict.data(report.exit_code)
        if verdict.outcome is AttemptOutcome.PREEMPTED:
            self._requeue_preempted(conn, row, verdict, data, now)
            attempt_status, final = JobStatus.PREEMPTED, JobStatus.PENDING
        else:
            attempt_status, final = self._retry_or_end(conn, row, verdict, report.exit_code, data, now)
        end = AttemptEnd.of(
            row, report, status=attempt_status, outcome=verdict.outcome, reason=verdict.reason, now=now
        )
        end_attempt_row(conn, end)
        if row.gang_id is not None:
            self._gangs.end_gang_attempt(conn, row.gang_id, row.attempt, final, now)
        if row.array_id is not None:
            task_moved(conn, row, final, now, ran=True)
        return final

    def _verdict(self, conn: sa.Connection, row: Any, report: FinishReport) -> _Verdict:
        """The outcome the attempt ends with: a cancel or a gang's stop overrides the report's, and
        past the cap a preemption counts as an infrastructure failure."""
        cancel_requested = JobStatus(row.status) is JobStatus.CANCELLING
        verdict = _Verdict(report.outcome, report.reason, cancel_requested)
        if cancel_requested and verdict.outcome is not AttemptOutcome.SUCCEEDED:
            verdict.outcome = AttemptOutcome.CANCELLED
        elif row.gang_abort is not None and verdict.outcome is not AttemptOutcome.SUCCEEDED:
            # Another rank ended badly and this one was stopped for it: the gang's attempt ends
            # as that rank's did (a preempted rank requeues the gang without using a try).
            verdict.outcome = AttemptOutcome(row.gang_abort["outcome"])
            verdict.reason = row.gang_abort["reason"]
        if verdict.outcome is AttemptOutcome.PREEMPTED:
            before = self.preemptions(conn, row.id, row.attempt)
            cap = self._db.config.max_preemptions
            if before >= cap:
                verdict.outcome = AttemptOutcome.INFRA
                verdict.reason = (
                    f"{verdict.reason or 'preempted'}; preempted {before} times before, "
                    "so this one uses a retry"
                )
            elif before + 1 >= cap:
                # The scheduler must not pick it again (it leaves spot capacity too): no more evictions.
                verdict.requeue["preemptible"] = False
        return verdict

    def _requeue_preempted(
        self, conn: sa.Connection, row: Any, verdict: _Verdict, data: dict[str, Any], now: float
    ) -> None:
        """RUNNING → PREEMPTED → PENDING: back in the queue without using a try, and in its place:
        ``queued_at`` is kept, as Slurm and Kueue requeue evicted work (the eviction was not its doing)."""
        folded = folded_start(row)
        values: dict[str, Any] = {"lease_token": None}
        if folded is not None:
            values["started_at"] = folded
        # A start folded into this report (a rank 0 stopped at once for another rank's preemption)
        # was recorded as an event but not written: the row still says SCHEDULED.
        stored = JobStatus.SCHEDULED if folded is not None else None
        moved = move(conn, row, JobStatus.PREEMPTED, now=now, data=data, values=values, stored_status=stored)
        if folded is not None and not moved:
            # As in ``_retry_or_end``: the RUNNING event already recorded must not stand alone.
            raise ConcurrentChange(f"job {row.id} changed while its report was applied")
        row = job_row(conn, row.id)
        move(
            conn,
            row,
            JobStatus.PENDING,
            event_type="requeued",
            now=now,
            values={"tries": max(0, row.tries - 1), "worker_id": None, **verdict.requeue},
        )

    def _retry_or_end(
        self,
        conn: sa.Connection,
        row: Any,
        verdict: _Verdict,
        exit_code: int | None,
        data: dict[str, Any],
        now: float,
    ) -> tuple[JobStatus, JobStatus]:
        """Any other ending: back to PENDING when the retry policy allows another try, else final.
        Returns the attempt's status and the job's."""
        # Only the retry policy matters here; validating the whole spec again would cost more.
        policy = Retry.model_validate(row.spec.get("retry") or {})
        outcome, reason = verdict.outcome, verdict.reason
        folded = folded_start(row)
        stored = JobStatus.SCHEDULED if folded is not None else None
        values: dict[str, Any] = {"exit_code": exit_code, "lease_token": None, "deadline": None}
        if folded is not None:
            values["started_at"] = folded
        if outcome is AttemptOutcome.LOST:
            lost_values = {"lease_token": None, **({"started_at": folded} if folded is not None else {})}
            lost = move(
                conn, row, JobStatus.LOST, now=now, data=data, values=lost_values, stored_status=stored
            )
            if folded is not None and not lost:
                raise ConcurrentChange(f"job {row.id} changed while its report was applied")
            row = job_row(conn, row.id)
            # The folded start is written now; what follows moves on from the row as it is.
            folded = stored = None
            values.pop("started_at", None)
        # The worker reports an OOM kill as a reason starting "oom" (ExitStatus.describe).
        oom = outcome is AttemptOutcome.FAILED and (reason or "").startswith("oom")
        decision = retry_policy.decide(policy, outcome, exit_code, row.tries, oom=oom)
        attempt_status = JobStatus.LOST if outcome is AttemptOutcome.LOST else decision.final_status
        if decision.retry and not verdict.cancel_requested:
            final = JobStatus.PENDING
            values.update(
                worker_id=None,
                reason=reason,
                not_before=now + decision.delay_s if decision.delay_s else None,
            )
            if outcome is not AttemptOutcome.LOST:
                # A failure retried joins the back of the queue; a job whose worker was lost keeps
                # its place (``queued_at``), as a preempted one does.
                values["queued_at"] = now
            moved = move(
                conn,
                row,
                final,
                event_type="retrying",
                now=now,
                data=data,
                values=values,
                stored_status=stored,
            )
        else:
            final = decision.final_status
            values.update(finished_at=now, reason=reason or row.reason)
            moved = move(conn, row, final, now=now, data=data, values=values, stored_status=stored)
        if folded is not None and not moved:
            # The row changed since it was read (a cancel on another connection): the RUNNING
            # event already recorded must not stand alone. Roll back; the report is applied again.
            raise ConcurrentChange(f"job {row.id} changed while its report was applied")
        return attempt_status, final

    def preemptions(self, conn: sa.Connection, job_id: str, before_attempt: int) -> int:
        """How many of the job's attempts before ``before_attempt`` were preempted."""
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(job_attempts)
                .where(
                    job_attempts.c.job_id == job_id,
                    job_attempts.c.number < before_attempt,
                    job_attempts.c.status == JobStatus.PREEMPTED.value,
                )
            ).scalar_one()
        )
