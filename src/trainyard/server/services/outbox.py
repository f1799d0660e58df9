"""The outbox relay as the leader runs it: committed job events onto the bus, in batches."""

from __future__ import annotations

from typing import Any

from trainyard.bus.base import EventBus
from trainyard.bus.relay import OutboxRelay
from trainyard.model.states import TERMINAL
from trainyard.server.metrics import Metrics
from trainyard.store import Outbox

RELAY_BATCH = 1000
"""Events per read of the outbox; a full batch means more are waiting."""
_TERMINAL_NAMES = frozenset(s.value for s in TERMINAL)


class EventRelay:
    """Moves committed events from the store's outbox to the bus and counts the jobs that ended."""

    def __init__(self, store: Outbox, bus: EventBus, metrics: Metrics, *, batch: int = RELAY_BATCH) -> None:
        self.metrics = metrics
        self.batch = batch
        self.relay = OutboxRelay(store, bus, batch=batch, on_published=self._published)

    async def relay_once(self) -> int:
        """One batch of committed events onto the bus (0 while the bus is down: they wait)."""
        return await self.relay.run_once()

    def _published(self, payloads: list[dict[str, Any]]) -> None:
        for payload in payloads:
            if payload.get("to_status") in _TERMINAL_NAMES:
                self.metrics.finished.labels(payload["to_status"]).inc()
