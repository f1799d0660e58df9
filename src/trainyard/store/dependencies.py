"""Dependencies: jobs that wait for others (``depends_on``), released or ended as those end.

A job submitted with ``depends_on`` is PENDING with ``awaiting_dependencies`` set (an array: each of
its rows), which keeps it out of the scheduler's snapshot. The leader calls ``resolve`` every cycle:
a waiting job whose dependencies are all met is released to the scheduler; one with a dependency that
can never be met ends FAILED (``dependency never satisfied: job X ended SUCCEEDED``, Slurm's
DependencyNeverSatisfied) instead of waiting forever; any other says what it waits for
(``waiting for job X (RUNNING)``). When a dependency is an array, every one of its tasks must meet
the condition (``trainyard.model.arrays.dependency_state``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa

from trainyard.model.arrays import Condition, dependency_state, never_reason, waiting_reason
from trainyard.model.states import JobStatus
from trainyard.store.arrays import counts_of, end_pending_tasks, settle
from trainyard.store.db import Db
from trainyard.store.schema import artifacts, jobs
from trainyard.store.transitions import job_row, move

_WAITING = sa.and_(
    jobs.c.awaiting_dependencies == sa.true(),
    jobs.c.status == JobStatus.PENDING.value,
    jobs.c.array_index.is_(None),  # an array waits as its parent; its tasks follow it
)


@dataclass
class Resolution:
    """What one ``resolve`` did."""

    released: list[str] = field(default_factory=list)
    """Jobs (arrays: their parents) whose dependencies are met: the scheduler may start them."""
    touched: list[str] = field(default_factory=list)
    """Every row whose pending reason changed without an event (an array's tasks included)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Jobs ended FAILED because a dependency can never be met, with the reason."""
    waiting: dict[str, str] = field(default_factory=dict)
    """Jobs that still wait, with the reason written (only those whose reason changed)."""


@dataclass(frozen=True)
class _Verdict:
    state: str  # met | waiting | never
    reason: str | None = None


def _verdict(deps: list[dict[str, Any]], found: Mapping[str, tuple[str, dict[str, int]]]) -> _Verdict:
    """All of a job's dependencies together: never (the first that cannot be met), met, or waiting
    for the first not met yet."""
    first_waiting: str | None = None
    for d in deps:
        job, condition = str(d.get("job")), cast(Condition, d.get("condition", "succeeded"))
        if job not in found:
            return _Verdict("never", f"dependency never satisfied: job {job} does not exist")
        status, counts = found[job]
        state = dependency_state(condition, counts)
        if state == "never":
            return _Verdict("never", never_reason(job, condition, status, counts))
        if state == "waiting" and first_waiting is None:
            first_waiting = waiting_reason(job, status)
    return _Verdict("met") if first_waiting is None else _Verdict("waiting", first_waiting)


class DependencyRepo:
    """The leader's resolution of waiting jobs, and the artifacts a dependent job is handed."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def _read(self) -> tuple[list[sa.Row[Any]], dict[str, tuple[str, dict[str, int]]]]:
        """The waiting jobs, and the status (with task counts for an array) of what they wait for."""
        with self._db.read() as conn:
            waiting = conn.execute(
                sa.select(
                    jobs.c.id, jobs.c.spec, jobs.c.pending_reason, jobs.c.array_tasks, jobs.c.team
                ).where(_WAITING)
            ).all()
            if not waiting:
                return [], {}
            ids = {str(d.get("job")) for w in waiting for d in w.spec.get("depends_on") or ()}
            rows = conn.execute(
                sa.select(jobs.c.id, jobs.c.status, jobs.c.array_tasks).where(jobs.c.id.in_(ids))
            ).all()
            arrays = counts_of(conn, [r.id for r in rows if r.array_tasks is not None])
        found = {r.id: (r.status, arrays.get(r.id) or {r.status: 1}) for r in rows}
        return list(waiting), found

    def resolve(self) -> Resolution:
        """Release, end or explain every waiting job (one read when none waits; the leader calls it
        each cycle)."""
        waiting, found = self._read()
        out = Resolution()
        if not waiting:
            return out
        verdicts = {w.id: _verdict(list(w.spec.get("depends_on") or ()), found) for w in waiting}
        changed = [
            w
            for w in waiting
            if verdicts[w.id].state != "waiting" or verdicts[w.id].reason != w.pending_reason
        ]
        if not changed:
            return out
        now = self._db.clock()
        with self._db.tx() as conn:
            for w in changed:
                v = verdicts[w.id]
                if v.state == "met":
                    rows = self._update(conn, w.id, awaiting_dependencies=False, pending_reason=None)
                    if rows:
                        out.released.append(w.id)
                        out.touched.extend(rows)
                elif v.state == "never":
                    assert v.reason is not None
                    if self._fail(conn, w.id, v.reason, now):
                        out.failed[w.id] = v.reason
                else:
                    assert v.reason is not None
                    out.touched.extend(self._update(conn, w.id, pending_reason=v.reason))
                    out.waiting[w.id] = v.reason
        if out.touched:
            self._db.changed(out.touched)  # no event, but their views changed
        return out

    @staticmethod
    def _rows_of(job_id: str) -> sa.ColumnElement[bool]:
        """The job's row, and an array's task rows too."""
        return sa.and_(
            sa.or_(jobs.c.id == job_id, jobs.c.array_id == job_id),
            jobs.c.status == JobStatus.PENDING.value,
            jobs.c.awaiting_dependencies == sa.true(),
        )

    def _update(self, conn: sa.Connection, job_id: str, **values: Any) -> list[str]:
        """Set ``values`` on the waiting job's rows (an array's tasks too); the ids changed."""
        res = conn.execute(jobs.update().where(self._rows_of(job_id)).values(**values).returning(jobs.c.id))
        return [r.id for r in res]

    def _fail(self, conn: sa.Connection, job_id: str, reason: str, now: float) -> bool:
        """End a job (an array: each task, and the parent follows) whose dependency can never be met."""
        row = job_row(conn, job_id)
        if row is None or row.status != JobStatus.PENDING.value or not row.awaiting_dependencies:
            return False  # cancelled or released meanwhile
        values = {"finished_at": now, "reason": reason, "pending_reason": None}
        values["awaiting_dependencies"] = False
        data = {"reason": reason}
        if row.array_tasks is None:
            return move(conn, row, JobStatus.FAILED, values=values, data=data, now=now)
        end_pending_tasks(conn, job_id, JobStatus.FAILED, reason, data, now)
        parent = jobs.update().where(jobs.c.id == job_id)
        conn.execute(parent.values(reason=reason, awaiting_dependencies=False))
        settle(conn, job_id, now, ran=False)
        return True

    # ---- what a dependent job is handed ------------------------------------------------------------
    def dependency_artifacts(self, deps: list[dict[str, Any]], limit: int = 1000) -> list[tuple[str, Any]]:
        """The artifacts of the latest attempt of each job in ``deps`` (an array: of each of its
        tasks), as (job id, artifact row) in dependency and path order; at most ``limit``."""
        ids = [str(d.get("job")) for d in deps]
        if not ids:
            return []
        owner = sa.func.coalesce(jobs.c.array_id, jobs.c.id)
        q = (
            sa.select(owner.label("dep"), jobs.c.id, artifacts)
            .select_from(
                jobs.join(
                    artifacts, sa.and_(artifacts.c.job_id == jobs.c.id, artifacts.c.attempt == jobs.c.attempt)
                )
            )
            .where(sa.or_(jobs.c.id.in_(ids), jobs.c.array_id.in_(ids)))
            .order_by(jobs.c.array_index, artifacts.c.path)
            .limit(limit)
        )
        with self._db.read() as conn:
            rows = list(conn.execute(q))
        order = {j: i for i, j in enumerate(ids)}
        rows.sort(key=lambda r: order.get(r.dep, len(order)))
        return [(r.id, r) for r in rows]


__all__ = ["DependencyRepo", "Resolution"]
