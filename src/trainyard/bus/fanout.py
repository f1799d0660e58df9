"""Local fan-out shared by every bus: bounded per-subscriber queues and event-id de-duplication.

A subscriber that falls too far behind is dropped (its iterator ends) so a slow SSE client can never
grow memory without bound; it reconnects and replays from the store, which is the truth.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

_END: dict[str, Any] = {}


class RecentIds:
    """The last ``size`` event ids seen. Delivery is at-least-once, so the same event can arrive
    twice (a relay retry, a producer retry after a lost ack); a bounded window suffices because
    duplicates arrive close together."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, payload: dict[str, Any]) -> bool:
        """True when the payload's event id was not seen recently (and remember it)."""
        event_id = payload.get("event_id")
        if not isinstance(event_id, str):
            return True  # nothing to dedupe on: pass it through rather than drop it
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


class QueueSubscription:
    """One subscriber: an async iterator over payloads of the topics it asked for.

    ``offer``/``offer_many`` must run on the subscriber's event loop (``loop``); buses that receive on
    another thread hand over with ``loop.call_soon_threadsafe``.
    """

    def __init__(
        self,
        topics: frozenset[str],
        maxsize: int,
        on_close: Callable[[QueueSubscription], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.topics = topics
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self.closed = False
        self._on_close = on_close
        self._ready = ready

    def offer(self, payload: dict[str, Any]) -> None:
        self.offer_many((payload,))

    def offer_many(self, payloads: Iterable[dict[str, Any]]) -> None:
        if self.closed:
            return
        for payload in payloads:
            try:
                self.queue.put_nowait(payload)
            except asyncio.QueueFull:
                self.close()
                return

    def close(self) -> None:
        """Detach from the bus and end the iterator (at once: what is still queued is dropped)."""
        if self.closed:
            return
        self.closed = True
        self._on_close(self)
        # Make room for the end marker so a reader blocked on the queue wakes up and stops.
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_END)

    async def ready(self) -> None:
        """Return once events published from now on will reach this subscription."""
        if self._ready is not None:
            await self._ready()

    async def _iter(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            item = await self.queue.get()
            if item is _END:
                return
            yield item

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iter()
