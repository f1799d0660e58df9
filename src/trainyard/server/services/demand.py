"""The pending demand that fits no worker today, per pool and GPU type: the autoscaling signal.

The leader's scheduler loop posts it every cycle (:func:`trainyard.scheduler.demand.cycle_demand`
over the cycle's decisions) and publishes it to the store (``scheduler_state``, key ``demand``) as
the queue board is published: when it changed (at most once a second), and every
``REPUBLISH_EVERY_S`` otherwise, so that its time stays fresh. Every replica answers
``GET /v1/pools/demand`` and exports ``trainyard_pool_pending_demand`` from the leader's figures,
its own when it leads, else the published copy (re-read when a second old): Prometheus may scrape
any replica, and an autoscaler's query takes the ``max`` over them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainyard.scheduler.demand import PoolDemand, ReplicaShape
from trainyard.server.queueboard import PUBLISH_EVERY_S, REFRESH_EVERY_S
from trainyard.server.services.blocking import off_loop
from trainyard.server.services.replica import Replica

if TYPE_CHECKING:
    from trainyard.store.ports import SchedulerState

DEMAND_KEY = "demand"
REPUBLISH_EVERY_S = 15.0
"""An unchanged board is published again this often, so followers see a recent ``computed_at``."""
KEEP_ZERO_S = 3600.0
"""A pool and GPU type whose demand fell to nothing stays on the board, at 0, this long: the gauge
drops to 0 (which a query can tell from "not exported") rather than vanish at once."""
STALE_S = 120.0
"""A board older than this is not exported as a gauge: no leader is computing it (the leader posts
one every cycle, and publishes at least every ``REPUBLISH_EVERY_S``), and an autoscaler must not act
on a figure nobody updates. ``GET /v1/pools/demand`` still shows it, with its time."""


def _shape_json(shape: ReplicaShape | None) -> dict[str, Any] | None:
    if shape is None:
        return None
    return {"cpu": shape.cpu, "memory": shape.memory, "gpu": shape.gpu, "replicas": shape.replicas}


def _shape(data: Mapping[str, Any] | None) -> ReplicaShape | None:
    if not data:
        return None
    return ReplicaShape(float(data["cpu"]), int(data["memory"]), int(data["gpu"]), int(data["replicas"]))


@dataclass(frozen=True)
class DemandBoard:
    """The leader's latest demand rows and when it computed them (0: never)."""

    rows: tuple[PoolDemand, ...] = ()
    computed_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The board as stored in ``scheduler_state``."""
        return {
            "computed_at": self.computed_at,
            "rows": [
                {
                    "pool": r.pool,
                    "gpu_type": r.gpu_type,
                    "jobs": r.jobs,
                    "cpu": r.cpu,
                    "memory": r.memory,
                    "gpu": r.gpu,
                    "largest": _shape_json(r.largest),
                }
                for r in self.rows
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DemandBoard:
        """A board read back from ``scheduler_state``."""
        rows = tuple(
            PoolDemand(
                str(r["pool"]),
                str(r["gpu_type"]),
                int(r["jobs"]),
                float(r["cpu"]),
                int(r["memory"]),
                int(r["gpu"]),
                _shape(r.get("largest")),
            )
            for r in data.get("rows", [])
        )
        return cls(rows, float(data.get("computed_at", 0.0)))

    def view(self) -> dict[str, Any]:
        """``GET /v1/pools/demand``: per pool and GPU type, the counted pending jobs, their demand per
        resource and the largest job's per-replica shape; when the leader computed it (null: never)."""
        return {
            "computed_at": self.computed_at or None,
            "pools": [
                {
                    "pool": r.pool,
                    "gpu_type": r.gpu_type,
                    "pending_jobs": r.jobs,
                    "demand": {"gpu": r.gpu, "cpu": r.cpu, "memory": r.memory},
                    "largest_job": _shape_json(r.largest),
                }
                for r in self.rows
            ],
        }


class PoolDemands:
    """The leader's demand board, and the copy it published for the other replicas."""

    def __init__(
        self, store: SchedulerState, replica: Replica, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.replica = replica
        self.clock = clock
        self.local = DemandBoard()  # the leader's, posted every cycle
        self._nonzero_at: dict[tuple[str, str], float] = {}  # key -> last cycle it had demand
        self._published = DemandBoard()
        self._published_at = 0.0
        self._lock = threading.Lock()  # read from the scrape thread and from route threads
        self._copy = DemandBoard()  # this replica's copy of the published board
        self._copy_read_at = -math.inf

    def post(self, rows: list[PoolDemand], now: float) -> None:
        """The leader's cycle found ``rows`` (blocking: may publish to the store)."""
        current = {r.key: r for r in rows}
        for key in current:
            self._nonzero_at[key] = now
        self._nonzero_at = {k: t for k, t in self._nonzero_at.items() if now - t < KEEP_ZERO_S}
        for key in self._nonzero_at:
            current.setdefault(key, PoolDemand(*key))
        board = DemandBoard(tuple(current[k] for k in sorted(current)), now)
        self.local = board
        since = now - self._published_at
        if since >= REPUBLISH_EVERY_S or (board.rows != self._published.rows and since >= PUBLISH_EVERY_S):
            self.store.put_scheduler_state(DEMAND_KEY, board.to_json())
            self._published, self._published_at = board, now

    def read(self) -> DemandBoard:
        """The board to answer from (blocking): the leader's own, else the published copy."""
        if self.replica.is_leader and self.local.computed_at:
            return self.local
        with self._lock:
            now = self.clock()
            if not 0.0 <= now - self._copy_read_at < REFRESH_EVERY_S:  # a second old, or the clock went back
                got = self.store.get_scheduler_state(DEMAND_KEY)
                self._copy = DemandBoard.from_json(got[0]) if got else DemandBoard()
                self._copy_read_at = now
            return self._copy

    async def view(self) -> dict[str, Any]:
        """``GET /v1/pools/demand`` (see :meth:`DemandBoard.view`)."""
        if self.replica.is_leader and self.local.computed_at:
            return self.local.view()
        board = await off_loop(self.read)
        return board.view()

    def gauges(self) -> tuple[PoolDemand, ...]:
        """The rows ``trainyard_pool_pending_demand`` exports (blocking): none from a stale board."""
        board = self.read()
        return board.rows if self.clock() - board.computed_at <= STALE_S else ()
