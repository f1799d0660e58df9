"""The guarded state move and the rows written with it: event, outbox and attempt rows.

Every job state change goes through ``move``: one conditional UPDATE guarded by the current status
and attempt (and the lease token where a worker is involved) plus an event row and an outbox row, all
in the caller's transaction. A move whose UPDATE matches no row is refused, never applied twice.
The event and outbox rows of a transaction are buffered and inserted with one executemany each just
before it commits (``buffered_events``, which ``Db.tx`` runs).

Everything here works on a connection the caller holds; nothing opens a transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from trainyard.model.states import LIVE, AttemptOutcome, JobStatus, sources_of
from trainyard.store.bulk import insert_together
from trainyard.store.records import FinishReport
from trainyard.store.schema import job_attempts, job_events, jobs, outbox

TOPIC_SUBMITTED = "job.submitted"
TOPIC_EVENTS = "job.events"
EVENT_SCHEMA_VERSION = 1
LIVE_NAMES = [s.value for s in LIVE]
"""The live statuses' names, for ``IN`` clauses."""

# Hot-path statements are built once: constructing a Core statement per call costs ~5x executing
# a prebuilt one (cache-key generation and coercions), and these run several times per job.
MOVE = jobs.update().where(
    jobs.c.id == sa.bindparam("g_id"),
    jobs.c.status == sa.bindparam("g_status"),
    jobs.c.attempt == sa.bindparam("g_attempt"),
)
"""A job row's guarded UPDATE: parameters ``g_id``, ``g_status`` and ``g_attempt`` plus the values."""
_MOVE_FENCED = MOVE.where(jobs.c.lease_token == sa.bindparam("g_token"))
_SELECT_JOB = sa.select(jobs).where(jobs.c.id == sa.bindparam("s_id"))
_INSERT_EVENT = job_events.insert()
_INSERT_OUTBOX = outbox.insert()
UPDATE_ATTEMPT = job_attempts.update().where(
    job_attempts.c.job_id == sa.bindparam("a_job"), job_attempts.c.number == sa.bindparam("a_number")
)
"""An attempt row's UPDATE: parameters ``a_job`` and ``a_number`` plus the values."""

_BUFFER = "ty_events"  # the key of a transaction's buffered rows in ``conn.info``
ROWS_BEFORE_EVENTS = "ty_rows_before_events"
"""Where ``Db.apply_batch`` leaves its deferred rows (``(insert, rows)``) for ``buffered_events``."""


def buffered_events(conn: sa.Connection, touched: list[str]) -> Iterator[sa.Connection]:
    """Collect the transaction's event and outbox rows and insert them with one executemany each
    just before commit: a job's four transitions would otherwise cost eight statements. Used as
    ``yield from`` in the transaction's context manager; the ids of the jobs with events go to
    ``touched``."""
    events: list[dict[str, Any]] = []
    outbox_rows: list[dict[str, Any]] = []
    before: list[tuple[sa.Insert, list[dict[str, Any]]]] = []
    conn.info[_BUFFER] = (events, outbox_rows)
    conn.info[ROWS_BEFORE_EVENTS] = before
    try:
        yield conn
        touched.extend(e["job_id"] for e in events)
        # One statement on PostgreSQL (a group-commit batch's jobs, events and outbox rows).
        insert_together(conn, [*before, (_INSERT_EVENT, events), (_INSERT_OUTBOX, outbox_rows)])
    finally:
        conn.info.pop(_BUFFER, None)
        conn.info.pop(ROWS_BEFORE_EVENTS, None)


def job_row(conn: sa.Connection, job_id: str) -> sa.Row[Any] | None:
    """The job's row as it is in this transaction."""
    return conn.execute(_SELECT_JOB, {"s_id": job_id}).first()


def move(
    conn: sa.Connection,
    job: Any,
    to: JobStatus,
    *,
    event_type: str | None = None,
    lease_token: str | None = None,
    values: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    now: float,
    stored_status: JobStatus | None = None,
) -> bool:
    """Move ``job`` (its row as read in this transaction) to ``to`` if the state machine allows it
    and the row is still as read; record the event. False, and nothing written, otherwise.

    ``lease_token``: also require the row to hold this lease. ``values``: further columns to set.
    ``stored_status``: what the row says when it differs from ``job.status`` (a transition recorded
    as an event but folded into this UPDATE, see ``AttemptRepo.start``)."""
    src = JobStatus(job.status)
    if src not in sources_of(to):
        return False
    # The attempt number only grows (on each lease), so it fences a move computed from a stale read.
    vals = {"status": to.value, "updated_at": now, **(values or {})}
    guard = {"g_id": job.id, "g_status": (stored_status or src).value, "g_attempt": job.attempt}
    if lease_token is None:
        stmt = MOVE
    else:
        stmt, guard["g_token"] = _MOVE_FENCED, lease_token
    if conn.execute(stmt, {**vals, **guard}).rowcount != 1:
        return False
    record_event(
        conn,
        job_id=job.id,
        team=job.team,
        type_=event_type or to.value.lower(),
        src=src.value,
        dst=to.value,
        attempt=int(vals.get("attempt", job.attempt)),
        data=data or {},
        now=now,
    )
    return True


def record_event(
    conn: sa.Connection,
    *,
    job_id: str,
    team: str,
    type_: str,
    src: str | None,
    dst: str | None,
    attempt: int,
    data: dict[str, Any],
    now: float,
    topic: str = TOPIC_EVENTS,
) -> None:
    """Write a job event and its outbox row (buffered until commit inside ``Db.tx``)."""
    event_id = str(uuid.uuid4())
    row = {
        "event_id": event_id,
        "job_id": job_id,
        "team": team,
        "type": type_,
        "from_status": src,
        "to_status": dst,
        "attempt": attempt,
        "at": now,
        "data": data,
    }
    payload = {"schema": EVENT_SCHEMA_VERSION, **row}
    out = {"event_id": event_id, "topic": topic, "key": job_id, "payload": payload, "created_at": now}
    buffered = conn.info.get(_BUFFER)
    if buffered is None:  # a connection outside Db.tx (tests, tools): write at once
        conn.execute(_INSERT_EVENT, row)
        conn.execute(_INSERT_OUTBOX, out)
    else:
        buffered[0].append(row)
        buffered[1].append(out)


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended, as its row records it."""

    job_id: str
    number: int
    status: JobStatus
    outcome: AttemptOutcome
    finished_at: float
    exit_code: int | None = None
    reason: str | None = None
    started_at: float | None = None
    """A start reported with the end (a folded start): written with it."""
    stderr_tail: str | None = None
    log_bytes: int | None = None
    checkpoint_key: str | None = None

    @classmethod
    def of(
        cls,
        row: Any,
        report: FinishReport,
        *,
        status: JobStatus,
        outcome: AttemptOutcome,
        reason: str | None,
        now: float,
    ) -> AttemptEnd:
        """The end of ``row``'s current attempt as ``report`` tells it, with the status, outcome and
        reason the store settled on (they differ from the report's when a cancel, a gang's stop or
        the preemption cap decided)."""
        return cls(
            job_id=row.id,
            number=row.attempt,
            status=status,
            outcome=outcome,
            finished_at=now,
            exit_code=report.exit_code,
            reason=reason,
            started_at=folded_start(row),
            stderr_tail=report.stderr_tail,
            log_bytes=report.log_bytes,
            checkpoint_key=report.checkpoint_key,
        )


def folded_start(row: Any) -> float | None:
    """When a row read as SCHEDULED started, if its start was reported with its end and is not
    written yet (``AttemptRepo.start`` with ``fold``): the row in the database still says SCHEDULED."""
    folded: float | None = getattr(row, "folded_start", None)
    return folded


def end_attempt_row(conn: sa.Connection, end: AttemptEnd) -> None:
    """Close the attempt's row."""
    values = {
        "a_job": end.job_id,
        "a_number": end.number,
        "status": end.status.value,
        "outcome": end.outcome.value,
        "finished_at": end.finished_at,
        "exit_code": end.exit_code,
        "reason": end.reason,
        "stderr_tail": end.stderr_tail,
        "log_bytes": end.log_bytes,
        "checkpoint_key": end.checkpoint_key,
    }
    if end.started_at is not None:
        values["started_at"] = end.started_at
    conn.execute(UPDATE_ATTEMPT, values)
