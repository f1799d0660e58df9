"""Group commit: concurrent writes from many requests share one database transaction.

One writer task takes everything queued while the previous batch was committing and applies it in a
single transaction. Under load this turns N BEGIN/COMMIT round trips
and N thread hops into one, without delaying a lone request: an idle writer starts at once.
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

    def __init__(self, store: BatchWriter, max_batch: int = 256) -> None:
        self._store = store
        self._max = max_batch
        self._queue: list[tuple[Callable[[sa.Connection], Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run(self, op: Callable[[sa.Connection], T]) -> T:
        """Queue ``op`` (a function of the transaction's connection) and wait for its result."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._writer(), name="group-commit")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        self._wake.set()
        return await fut

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                try:
                    results = await asyncio.to_thread(self._store.apply_batch, [op for op, _ in batch])
                except Exception as e:  # the transaction failed (database down, or a lone op's error)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
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
