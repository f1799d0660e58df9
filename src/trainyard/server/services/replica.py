"""This replica's standing: whether it leads the singleton loops, and whether a worker still counts
as alive (which depends on when this replica started leading and when the store came back)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from trainyard.cache.base import Cache


class Replica:
    """Leadership as the leader loop last saw it, and the liveness rule for workers.

    A worker is alive while its heartbeat is in the cache. One that has not beaten yet gets three
    heartbeat intervals from its registration, or, if it registered with an earlier control-plane
    process or before a store outage, ``restart_grace`` from this replica's start of leadership or
    the store's return: its agent is reconnecting with backoff."""

    def __init__(
        self,
        cache: Cache,
        *,
        heartbeat_interval: float,
        restart_grace: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.heartbeat_interval = heartbeat_interval
        self.restart_grace = restart_grace
        self.clock = clock
        self.is_leader = False
        self.leader_since = clock()
        self.store_back_at = 0.0  # when the reconciler reached the store again after an outage

    def lead(self) -> bool:
        """This replica holds the lead: True when it has just taken it (the start of its grace)."""
        if self.is_leader:
            return False
        self.leader_since = self.clock()
        self.is_leader = True
        return True

    def follow(self) -> None:
        """Another replica leads (or none can be reached)."""
        self.is_leader = False

    def store_back(self, at: float) -> None:
        """The store answered again after an outage: workers get time to check in again."""
        self.store_back_at = at

    def last_beats(self, worker_ids: Sequence[str]) -> dict[str, float]:
        """The cached last beats of these workers, in one round trip (see ``alive_with``)."""
        return self.cache.last_heartbeats(worker_ids)

    def alive_with(self, last_beat: float | None, registered_at: float) -> bool:
        """Whether the worker counts as alive now (see the class docstring), given its cached last beat
        (``last_beats`` of every worker at once: a sweep over the fleet makes one round trip to the
        cache, not one per worker)."""
        if last_beat is not None:
            return True
        grace = 3 * self.heartbeat_interval
        # Heartbeats cannot be taken while the store is down (the worker's credential is looked up
        # there), so a store outage is treated like a restart: agents get time to check in again.
        since = max(self.leader_since, self.store_back_at)
        now = self.clock()
        if registered_at >= since:
            return now - registered_at < grace
        # Registered with an earlier control-plane process (this one restarted): its agents are
        # reconnecting with backoff, so give them longer before declaring their jobs lost.
        return now - since < max(grace, self.restart_grace)
