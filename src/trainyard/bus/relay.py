"""The outbox relay: committed job events, in commit order, onto the event bus.

Each state change writes an outbox row in its own transaction; the relay reads unsent rows in id
order, publishes them as one batch, and marks them sent only once the bus acknowledged every one.
If the bus is down the rows stay unsent (the outbox grows, nothing is lost) and the next run
retries; a crash between publishing and marking republishes a batch, which consumers dedupe by
event id. Run one relay at a time (the control plane's leader does): two would interleave batches
and could reorder one job's events in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from trainyard.bus.base import BusUnavailable, EventBus
from trainyard.store.ports import Outbox

log = logging.getLogger(__name__)

OnPublished = Callable[[list[dict[str, Any]]], None]
"""Called with the payloads of each batch once they are published and marked sent (for metrics).
Runs on the event loop; an exception propagates out of ``run_once`` (the rows stay marked sent)."""


def id_ranges(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Ascending ids as inclusive runs of consecutive values: [1, 2, 3, 7, 8] → [(1, 3), (7, 8)]."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


class OutboxRelay:
    def __init__(
        self,
        store: Outbox,
        bus: EventBus,
        batch: int = 1000,
        on_published: OnPublished | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.batch = batch
        self.on_published = on_published
        self.published = 0
        """Events published and marked sent by this relay since it was made."""
        self.bus_down = False
        """True from a failed publish until the next one that succeeds."""

    async def run_once(self) -> int:
        """Publish up to ``batch`` unsent events; the number published (0 while the bus is down)."""
        rows = await asyncio.to_thread(self.store.outbox_unsent, self.batch)
        if not rows:
            return 0
        try:
            await self.bus.publish_batch([(r.topic, r.key, r.payload) for r in rows])
        except BusUnavailable as e:
            if not self.bus_down:  # once per outage, not once per retry
                log.warning("event bus unavailable; events wait in the outbox until it is back: %s", e)
                self.bus_down = True
            return 0
        if self.bus_down:
            log.info("event bus reachable again; draining the outbox")
            self.bus_down = False
        # outbox_unsent reads in id order, and every row of a run of consecutive ids was read, so
        # marking by ranges cannot touch a row that was not published.
        await asyncio.to_thread(self.store.outbox_mark_sent_ranges, id_ranges([r.id for r in rows]))
        self.published += len(rows)
        if self.on_published is not None:
            self.on_published([r.payload for r in rows])
        return len(rows)

    async def drain(self) -> int:
        """Run until the outbox is empty or the bus is down; the number published."""
        total = 0
        while True:
            n = await self.run_once()
            total += n
            if n < self.batch:
                return total
