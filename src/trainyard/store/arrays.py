"""Arrays: a parent row and one task row per index, written in bulk; the parent's status follows its
tasks; a cancel of the parent reaches every task; tasks read in pages and counted per status.

The parent (``array_tasks`` set) is bookkeeping: it is never scheduled, leased or reconciled, and it
is not counted in the queue views. Each task is a row ``<parent>-<index>`` (``array_id``,
``array_index``) that goes through the job state machine as any job does; the parent follows its
tasks, as a gang's member rows follow rank 0 (it is moved here, not by ``move``):

- PENDING until one task has run (reached RUNNING or ended), then RUNNING (CANCELLING once
  cancelled) while any task has not ended;
- then SUCCEEDED if every task did, else CANCELLED (cancelled, or only cancellations besides
  successes), else FAILED (``trainyard.model.arrays.array_status``).

Every task move that matters to the parent calls ``task_moved`` in the move's transaction, which
locks the parent row (PostgreSQL) before it looks at the other tasks, so two tasks ending at once
cannot both think another is still running.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa

from trainyard.model.arrays import array_status, task_command, task_id
from trainyard.model.records import Job
from trainyard.model.spec import JobSpec
from trainyard.model.states import TERMINAL, JobStatus
from trainyard.store.db import Db
from trainyard.store.rows import job_record
from trainyard.store.schema import job_attempts, jobs
from trainyard.store.transitions import move, record_event

OPEN_NAMES = [s.value for s in JobStatus if s not in TERMINAL]
"""Statuses a task has not ended in, for ``IN`` clauses (index seeks on ``ix_jobs_array_status``)."""
_TASK = jobs.c.array_index.is_not(None)


def task_rows(parent: dict[str, Any], spec: JobSpec) -> list[dict[str, Any]]:
    """The task rows of a new array whose parent row is ``parent``: each a copy of it with its own
    id, index and command (``{index}`` replaced); the spec they store has no ``array``."""
    assert spec.array is not None
    base = dict(parent["spec"])
    del base["array"]
    command = base["command"]
    templated = any("{index}" in a for a in command)
    pid = parent["id"]
    common = {**parent, "array_id": pid, "array_tasks": None, "idempotency_key": None}
    rows = []
    for i in spec.array.task_indices():
        task_spec = {**base, "command": task_command(command, i)} if templated else base
        rows.append({**common, "id": task_id(pid, i), "array_index": i, "spec": task_spec})
    return rows


def insert_rows(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Insert ``jobs`` rows that all have the same keys, through the driver: an array's thousands of
    task rows. Core's executemany prepares each row's parameters in Python (two thirds of the time
    for 10,000 rows); here PostgreSQL takes them by ``COPY`` and SQLite by one ``executemany``."""
    if not rows:
        return
    columns = list(rows[0])
    json_columns = {c for c in columns if isinstance(jobs.c[c].type, sa.JSON)}
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in columns)
    table = quote(jobs.name)

    def values(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            (None if row[c] is None else orjson.dumps(row[c]).decode()) if c in json_columns else row[c]
            for c in columns
        )

    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection  # the psycopg connection, in this transaction
        assert raw is not None
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(values(row))
        return
    marks = ", ".join("?" for _ in columns)
    conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({marks})", [values(r) for r in rows])


def counts_of(conn: sa.Connection, parent_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Each array's task count per status."""
    out: dict[str, dict[str, int]] = {p: {} for p in parent_ids}
    if not parent_ids:
        return out
    rows = conn.execute(
        sa.select(jobs.c.array_id, jobs.c.status, sa.func.count())
        .where(jobs.c.array_id.in_(list(parent_ids)), _TASK)
        .group_by(jobs.c.array_id, jobs.c.status)
    )
    for parent, status, n in rows:
        out[parent][status] = int(n)
    return out


def _locked_parent(conn: sa.Connection, array_id: str) -> sa.Row[Any] | None:
    q = sa.select(jobs).where(jobs.c.id == array_id)
    if conn.dialect.name == "postgresql":  # SQLite: the transaction is the only writer already
        q = q.with_for_update()
    return conn.execute(q).first()


def set_parent(
    conn: sa.Connection, parent: Any, to: JobStatus, now: float, values: dict[str, Any] | None = None
) -> bool:
    """Move the parent to ``to`` (guarded by its status as read) and record the event."""
    if parent.status == to.value:
        return False
    vals: dict[str, Any] = {"status": to.value, "updated_at": now, **(values or {})}
    if to in TERMINAL:
        vals.setdefault("finished_at", now)
        vals["pending_reason"] = None
    elif to is not JobStatus.PENDING:
        vals["finished_at"] = None
        vals["pending_reason"] = None
        if to is JobStatus.RUNNING and parent.started_at is None:
            vals["started_at"] = now
    res = conn.execute(
        jobs.update().where(jobs.c.id == parent.id, jobs.c.status == parent.status).values(**vals)
    )
    if res.rowcount != 1:
        return False
    record_event(
        conn,
        job_id=parent.id,
        team=parent.team,
        type_=to.value.lower(),
        src=parent.status,
        dst=to.value,
        attempt=0,
        data={"array": True},
        now=now,
    )
    return True


def settle(conn: sa.Connection, array_id: str, now: float, *, ran: bool = True) -> JobStatus | None:
    """Bring the parent's status in line with its tasks; returns it (None: no such array).
    ``ran``: a task of it has run (the caller just saw one start or end)."""
    parent = _locked_parent(conn, array_id)
    if parent is None or parent.array_tasks is None:
        return None
    cancelling = parent.status == JobStatus.CANCELLING.value
    left = conn.execute(
        sa.select(jobs.c.id).where(jobs.c.array_id == array_id, jobs.c.status.in_(OPEN_NAMES), _TASK).limit(1)
    ).first()
    if left is not None:  # some task has not ended yet
        if cancelling:
            to = JobStatus.CANCELLING
        elif ran or parent.started_at is not None:
            to = JobStatus.RUNNING
        else:
            to = JobStatus.PENDING
    else:
        counts = counts_of(conn, [array_id])[array_id]
        to = array_status(counts, started=True, cancelling=cancelling)
    set_parent(conn, parent, to, now)
    return to


def task_moved(conn: sa.Connection, row: Any, to: JobStatus, now: float, *, ran: bool) -> None:
    """A task of an array (``row``, as read before its move) moved to ``to``: the parent follows.
    ``ran``: the task ran (it started, or an attempt of it ended), rather than being cancelled or
    failed while it waited."""
    array_id = row.array_id
    if to in TERMINAL or JobStatus(row.status) in TERMINAL:
        settle(conn, array_id, now, ran=ran)  # a task ended (or came back from an ending: a restart)
    elif ran:
        # The first task to run makes the array RUNNING; later ones find it so and change nothing.
        res = conn.execute(
            jobs.update()
            .where(jobs.c.id == array_id, jobs.c.status == JobStatus.PENDING.value)
            .values(status=JobStatus.RUNNING.value, started_at=now, updated_at=now, pending_reason=None)
        )
        if res.rowcount == 1:
            record_event(
                conn,
                job_id=array_id,
                team=row.team,
                type_=JobStatus.RUNNING.value.lower(),
                src=JobStatus.PENDING.value,
                dst=JobStatus.RUNNING.value,
                attempt=0,
                data={"array": True},
                now=now,
            )


def end_pending_tasks(
    conn: sa.Connection,
    array_id: str,
    to: JobStatus,
    reason: str,
    data: dict[str, Any],
    now: float,
) -> list[str]:
    """End every PENDING task of the array as ``to`` (CANCELLED, or FAILED for a dependency that can
    never be met) with one UPDATE and an event each; the ids ended."""
    ended = conn.execute(
        jobs.update()
        .where(jobs.c.array_id == array_id, jobs.c.status == JobStatus.PENDING.value, _TASK)
        .values(
            status=to.value,
            updated_at=now,
            finished_at=now,
            reason=reason,
            pending_reason=None,
            not_before=None,
        )
        .returning(jobs.c.id, jobs.c.team, jobs.c.attempt)
    ).all()
    for r in ended:
        record_event(
            conn,
            job_id=r.id,
            team=r.team,
            type_=to.value.lower(),
            src=JobStatus.PENDING.value,
            dst=to.value,
            attempt=r.attempt,
            data=data,
            now=now,
        )
    return [r.id for r in ended]


def cancel_array(conn: sa.Connection, parent: Any, actor: str, now: float) -> None:
    """Cancel an array: its pending tasks end at once, its leased ones go to CANCELLING until their
    workers stop them (``stopping_tasks``), and the parent follows (CANCELLING, then CANCELLED)."""
    if JobStatus(parent.status) in TERMINAL:
        return
    reason = f"cancelled by {actor}"
    data = {"by": actor, "array": parent.id}
    end_pending_tasks(conn, parent.id, JobStatus.CANCELLED, reason, data, now)
    live = conn.execute(
        sa.select(jobs).where(
            jobs.c.array_id == parent.id,
            jobs.c.status.in_([JobStatus.SCHEDULED.value, JobStatus.RUNNING.value]),
            _TASK,
        )
    ).all()
    for row in live:
        if move(
            conn,
            row,
            JobStatus.CANCELLING,
            data=data,
            now=now,
            values={"cancel_requested_at": now, "reason": reason},
        ):
            conn.execute(
                job_attempts.update()
                .where(job_attempts.c.job_id == row.id, job_attempts.c.number == row.attempt)
                .values(status=JobStatus.CANCELLING.value)
            )
    set_parent(conn, parent, JobStatus.CANCELLING, now, {"reason": reason})
    settle(conn, parent.id, now, ran=False)


def _encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"i{index}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if raw.startswith("i") and raw[1:].isdigit() and len(raw) < 12:
            return int(raw[1:])
    except (ValueError, UnicodeDecodeError):
        pass
    raise ValueError("cursor is not one this API returned")


class ArrayRepo:
    """Reads of arrays: their tasks in pages, and the tasks a cancel left stopping."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def tasks(
        self, array_id: str, limit: int = 100, cursor: str | None = None, statuses: Iterable[str] = ()
    ) -> tuple[list[Job], str | None]:
        """A page of the array's tasks by index (without their attempts), and the next page's cursor
        (None: the last page). ValueError: a cursor this API did not give out."""
        q = sa.select(jobs).where(jobs.c.array_id == array_id, _TASK).order_by(jobs.c.array_index)
        wanted = list(statuses)
        if wanted:
            q = q.where(jobs.c.status.in_(wanted))
        if cursor:
            q = q.where(jobs.c.array_index > _decode_cursor(cursor))
        with self._db.read() as conn:
            rows = conn.execute(q.limit(limit + 1)).all()
        page = rows[:limit]
        next_cursor = _encode_cursor(page[-1].array_index) if len(rows) > limit else None
        return [job_record(r, []) for r in page], next_cursor

    def stopping_tasks(self, array_id: str) -> list[Job]:
        """The array's tasks a cancel left CANCELLING, with their leases (their workers must be told)."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(jobs).where(
                    jobs.c.array_id == array_id, jobs.c.status == JobStatus.CANCELLING.value, _TASK
                )
            ).all()
        return [job_record(r, []) for r in rows]
