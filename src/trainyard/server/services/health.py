"""What the operations routes report: leadership, the store's readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import generate_latest

from trainyard.server.metrics import Metrics
from trainyard.server.services.blocking import off_loop
from trainyard.server.services.replica import Replica

if TYPE_CHECKING:
    from trainyard.store.ports import HealthStore


class Health:
    """Liveness, readiness and metrics of this replica."""

    def __init__(self, store: HealthStore, replica: Replica, metrics: Metrics) -> None:
        self.store = store
        self.replica = replica
        self.metrics = metrics

    @property
    def is_leader(self) -> bool:
        """Whether this replica runs the scheduler, reconciler and relay right now."""
        return self.replica.is_leader

    async def check_store(self) -> None:
        """Return when the state store answers; raise (whatever the driver raises) when it does not."""
        await off_loop(self.store.ping)

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition of every metric (collected in a thread: it queries the store)."""
        return await asyncio.to_thread(generate_latest, self.metrics.registry)
