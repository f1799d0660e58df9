"""The leader's picture of pending jobs and live attempts, kept between scheduler cycles.

Pure: no I/O. The store reads (``LeaseRepo.scheduling_full_read`` and ``scheduling_changes``) hand
over rows; this module folds them in. A cycle rereads only the jobs with events after the picture's
cursor (the newest ``job_events`` id it has applied: every job move writes an event row in the same
transaction). A changed job's rows replace whatever the picture held for it, so applying the same
change twice is harmless, which is what makes the gap rule below safe.

Event ids are allocated when a transaction inserts them, not when it commits: on PostgreSQL a
reader may see id 11 committed while id 10 is still in flight. So the cursor never moves past a
gap: the ids after it are applied now and again next cycle, until the gap fills. A gap that stays
open past ``GAP_GRACE_S`` (a rolled-back transaction leaves one for good) is skipped with a full
reread. A full reread also happens on start and every ``FULL_EVERY_S`` as a safety net.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from trainyard.store.leases import SchedulingRead
from trainyard.store.rows import PendingRow, RunningRow

FULL_EVERY_S = 60.0
"""A full reread at least this often, whatever the changes said."""
GAP_GRACE_S = 5.0
"""How long a gap in the event ids may stay open before it is taken for a rolled-back transaction."""
CHECKPOINTS_EVERY_S = 10.0
"""Checkpoint times (written by heartbeats without an event) are refreshed at least this often, and
whenever a replica marks new ones written (``FleetRepo.checkpoint_mark``)."""


@dataclass(frozen=True)
class Picture:
    """Pending jobs (with their ``not_before``) and live attempts by job row id, as of ``cursor``."""

    cursor: int
    pending: Mapping[str, tuple[PendingRow, float | None]] = field(default_factory=dict)
    running: Mapping[str, RunningRow] = field(default_factory=dict)
    full_at: float = 0.0  # when the last full reread was taken
    gap_since: float | None = None  # when the oldest open gap above ``cursor`` was first seen
    checkpoints_at: float = 0.0  # when checkpoint times were last refreshed


def full(read: SchedulingRead, now: float) -> Picture:
    """The picture of a full read."""
    return Picture(
        cursor=read.cursor,
        pending={row.id: (row, nb) for row, nb in read.pending},
        running={row.id: row for row in read.running},
        full_at=now,
        checkpoints_at=now,
    )


def apply(picture: Picture, read: SchedulingRead, now: float) -> Picture:
    """``picture`` with the changed jobs' rows replaced by ``read``'s, and the cursor advanced as far
    as the event ids run without a gap."""
    changed = read.changed or frozenset()
    pending = dict(picture.pending)
    running = dict(picture.running)
    for job_id in changed:
        pending.pop(job_id, None)
        running.pop(job_id, None)
    pending.update((row.id, (row, nb)) for row, nb in read.pending)
    running.update((row.id, row) for row in read.running)
    cursor, gap_since = advance(picture.cursor, read.event_ids, picture.gap_since, now)
    return replace(picture, cursor=cursor, pending=pending, running=running, gap_since=gap_since)


def advance(
    cursor: int, event_ids: Iterable[int], gap_since: float | None, now: float
) -> tuple[int, float | None]:
    """The new cursor: the last id of the unbroken run after ``cursor``; and when the gap that stops
    it was first seen (None: no gap)."""
    end = cursor
    gap = False
    for event_id in event_ids:
        if event_id == end + 1:
            end = event_id
        elif event_id > end:
            gap = True
            break
    if not gap:
        return end, None
    return end, gap_since if gap_since is not None else now


def needs_full(picture: Picture | None, read: SchedulingRead | None, now: float) -> bool:
    """Whether the next read should be a full one: no picture yet, the safety net is due, too many
    changes to read one by one, or a gap has stayed open past its grace."""
    if picture is None or now - picture.full_at >= FULL_EVERY_S or now < picture.full_at:
        return True
    if read is not None and read.overflow:
        return True
    return picture.gap_since is not None and now - picture.gap_since >= GAP_GRACE_S


def checkpoints_due(picture: Picture, now: float) -> bool:
    """Whether the checkpoint times should be refreshed this cycle."""
    return not 0 <= now - picture.checkpoints_at < CHECKPOINTS_EVERY_S


def with_checkpoints(picture: Picture, times: Mapping[str, float], now: float) -> Picture:
    """``picture`` with each live attempt's checkpoint time as ``times`` says (absent: never)."""
    running = {
        job_id: row
        if row.last_checkpoint_at == times.get(job_id)
        else row._replace(last_checkpoint_at=times.get(job_id))
        for job_id, row in picture.running.items()
    }
    return replace(picture, running=running, checkpoints_at=now)


def pending_view(picture: Picture, now: float, limit: int = 50_000) -> list[PendingRow]:
    """The pending jobs a cycle weighs, as ``pending_for_scheduling`` orders and limits them."""
    rows = [row for row, nb in picture.pending.values() if nb is None or nb <= now]
    rows.sort(key=_queue_order)
    return rows[:limit]


def running_view(picture: Picture) -> list[RunningRow]:
    """Every live attempt, by job row id."""
    return [picture.running[k] for k in sorted(picture.running)]


def _queue_order(row: PendingRow) -> tuple[int, float, str]:
    return (-row.priority, row.queued_at, row.id)
