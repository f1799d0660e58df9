"""The outbox: committed job events waiting for the event bus, and the replay check's view of them.

Rows are written with each state change (``transitions.record_event``); the relay reads them in id
order and marks them sent once the bus has them. Owns the ``outbox`` table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from trainyard.model.records import Event, OutboxRow
from trainyard.store.db import Db
from trainyard.store.rows import event_record
from trainyard.store.schema import job_events, outbox

_MARK_RANGE = (
    outbox.update()
    .where(
        outbox.c.id >= sa.bindparam("r_first"),
        outbox.c.id <= sa.bindparam("r_last"),
        outbox.c.sent_at.is_(None),
    )
    .values(sent_at=sa.bindparam("r_now"))
)


class OutboxRepo:
    """The outbox relay's and the replay check's reads and writes."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def outbox_unsent(self, limit: int = 500) -> list[OutboxRow]:
        """The oldest unsent rows, in id order."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(outbox).where(outbox.c.sent_at.is_(None)).order_by(outbox.c.id).limit(limit)
            ).all()
        return [OutboxRow(r.id, r.event_id, r.topic, r.key, r.payload) for r in rows]

    def outbox_mark_sent(self, ids: Sequence[int]) -> None:
        """Mark these rows sent."""
        if not ids:
            return
        with self._db.tx() as conn:
            conn.execute(outbox.update().where(outbox.c.id.in_(list(ids))).values(sent_at=self._db.clock()))

    def outbox_mark_sent_ranges(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Mark sent the unsent outbox rows whose id lies in one of the inclusive ``(first, last)``
        ranges: one short statement per range instead of an IN list of every id.

        Pass only ranges the caller read whole. An id missing inside a range can belong to a row
        that committed after the read (ids are taken before commit), and it would be marked sent
        without ever being published."""
        if not ranges:
            return
        now = self._db.clock()
        with self._db.tx() as conn:
            conn.execute(_MARK_RANGE, [{"r_first": a, "r_last": b, "r_now": now} for a, b in ranges])

    def outbox_prune_sent(self, before: float, limit: int = 5_000) -> int:
        """Delete up to ``limit`` rows the bus had before ``before``; how many went.

        A sent row only feeds the replay check, which compares the bus with the events still in
        the database; once retention has archived those events the row has nothing to check.
        Unsent rows are never touched, whatever their age. Small batches keep the write lock short.
        """
        oldest = (
            sa.select(outbox.c.id)
            .where(outbox.c.sent_at.is_not(None), outbox.c.sent_at < before)
            .order_by(outbox.c.sent_at, outbox.c.id)
            .limit(limit)
        )
        with self._db.tx() as conn:
            ids = [r.id for r in conn.execute(oldest)]
            if ids:
                conn.execute(outbox.delete().where(outbox.c.id.in_(ids)))
        return len(ids)

    def outbox_sent_before(self, before: float) -> int:
        """How many sent rows ``outbox_prune_sent`` would delete (a dry run's count)."""
        with self._db.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(outbox.c.sent_at.is_not(None), outbox.c.sent_at < before)
                ).scalar_one()
            )

    def outbox_lag(self) -> int:
        """How many rows wait unsent."""
        with self._db.read() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).where(outbox.c.sent_at.is_(None))).scalar_one()
            )

    def outbox_events(self, after_id: int = 0, limit: int = 10_000) -> list[tuple[int, str, bool, Event]]:
        """Outbox rows after ``after_id`` in id order, each as ``(outbox id, topic, sent, event)``:
        what the replay check expects in the event log. Joined on the events' unique event_id."""
        q = (
            sa.select(job_events, outbox.c.id.label("outbox_id"), outbox.c.topic, outbox.c.sent_at)
            .select_from(outbox.join(job_events, job_events.c.event_id == outbox.c.event_id))
            .where(outbox.c.id > after_id)
            .order_by(outbox.c.id)
            .limit(limit)
        )
        with self._db.read() as conn:
            rows = conn.execute(q).all()
        return [(r.outbox_id, r.topic, r.sent_at is not None, event_record(r)) for r in rows]

    def existing_event_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Which of these event ids the store holds."""
        ids = list(event_ids)
        found: set[str] = set()
        with self._db.read() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                q = sa.select(job_events.c.event_id).where(job_events.c.event_id.in_(chunk))
                found.update(conn.execute(q).scalars())
        return found
