"""In-process event bus. A subscriber that falls too far behind is dropped (its iterator ends) so a
slow SSE client can never grow memory without bound; it reconnects and replays from the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

_END: dict[str, Any] = {}


class MemorySubscription:
    def __init__(self, bus: MemoryBus, topics: frozenset[str], maxsize: int) -> None:
        self._bus = bus
        self.topics = topics
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self.closed = False

    def offer(self, payload: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.close()
            # Make room for the end marker so the reader wakes up and stops.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(_END)

    def close(self) -> None:
        self.closed = True
        self._bus._subs.discard(self)

    async def _iter(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            item = await self.queue.get()
            if item is _END:
                return
            yield item

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iter()


class MemoryBus:
    def __init__(self, maxsize: int = 10000) -> None:
        self._subs: set[MemorySubscription] = set()
        self._maxsize = maxsize

    async def publish(self, topic: str, key: str, payload: dict[str, Any]) -> None:
        for sub in list(self._subs):
            if topic in sub.topics:
                sub.offer(payload)

    def subscribe(self, topics: frozenset[str]) -> MemorySubscription:
        sub = MemorySubscription(self, topics, self._maxsize)
        self._subs.add(sub)
        return sub
