"""Group commit: concurrent writes from many requests share one database transaction.

One writer task takes everything queued while the previous batch was committing and applies it in a
single transaction. Under load this turns N BEGIN/COMMIT round trips
and N thread hops into one, without delaying a lone request: an idle writer starts at once.

On PostgreSQL a batch mostly waits: for each statement's round trip and for the commit's WAL flush.
A batch of plain submissions is one statement, sent in autocommit (``Db.apply_batch``,
``bulk.ends_transaction``): one round trip where BEGIN, the statement and COMMIT took three.
With one batch in flight at a time, submissions were bound by that wait (626/s, the database and
the control plane both half idle). ``writers`` lets several batches be in flight at once; it is
meant for operations that only insert new rows (submissions), which concurrent transactions cannot
deadlock on. Updates of existing rows (workers' reports) keep one writer: two batches updating the
same jobs in different orders could deadlock each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from trainyard.store import BatchWriter

T = TypeVar("T")
log = logging.getLogger("trainyard.group_commit")


class GroupCommit:
    """Writes from many concurrent requests applied together: each ``run`` queues an operation, one
    writer task applies everything queued in one transaction (``apply_batch``), and each caller gets
    its own operation's result or exception."""

    def __init__(
        self, store: BatchWriter, max_batch: int = 256, writers: int = 1, min_extra_batch: int = 4
    ) -> None:
        if writers < 1:
            raise ValueError("writers must be at least 1")
        self._store = store
        self._max = max_batch
        self._writers = writers
        # A further batch beside those in flight costs a transaction of its own (on PostgreSQL, CPU
        # of a few jobs' inserts): with fewer ops queued than this they wait for a batch in flight to
        # end and go together.
        self._min_extra = min_extra_batch
        self._queue: list[tuple[Callable[[sa.Connection], Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slot = asyncio.Event()  # set when a batch in flight finishes
        self.batches = 0  # batches applied (tests look)
        self.most_in_flight = 0  # the most batches that were in flight at once (tests look)

    async def run(self, op: Callable[[sa.Connection], T]) -> T:
        """Queue ``op`` (a function of the transaction's connection) and wait for its result."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._writer(), name="group-commit")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        self._wake.set()
        self._slot.set()
        return await fut

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                while self._in_flight and (
                    len(self._in_flight) >= self._writers or len(self._queue) < self._min_extra
                ):
                    self._slot.clear()
                    await self._slot.wait()  # set as a batch ends, or as ops come while one is in flight
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                if self._writers == 1:
                    await self._apply(batch)
                    continue
                task = asyncio.create_task(self._apply(batch), name="group-commit-batch")
                self._in_flight.add(task)
                self.most_in_flight = max(self.most_in_flight, len(self._in_flight))
                task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slot.set()

    async def _apply(self, batch: list[tuple[Callable[[sa.Connection], Any], asyncio.Future[Any]]]) -> None:
        self.batches += 1
        try:
            results = await asyncio.to_thread(self._store.apply_batch, [op for op, _ in batch])
        except Exception as e:  # the transaction failed (database down, or a lone op's error)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), (ok, value) in zip(batch, results, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def close(self) -> None:
        """Stop the writer task (operations still queued are not applied)."""
        if self._task is not None:
            self._task.cancel()
        for task in self._in_flight:
            task.cancel()
