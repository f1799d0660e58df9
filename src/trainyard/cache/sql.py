"""The cache's fallback on the state store (PostgreSQL or SQLite), for while Redis is unavailable.

Heartbeats go to ``workers.last_heartbeat`` and token buckets to ``rate_buckets``: slower than Redis
but shared by every replica. There is no status cache here: ``get_status`` always misses, so readers
go to the database, which is the truth anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from trainyard.cache.base import NO_FILL, StatusTicket, refill, take_step, unlimited
from trainyard.store.ports import CacheFallback


class SqlCache:
    """``Cache`` on the SQL store. Thread-safe, like the store.

    Heartbeats are only kept for registered workers (rows in ``workers``). The table keeps no
    expiry, so a beat counts as lapsed ``ttl_s`` after it, with the TTL this process last saw for
    that worker, else ``heartbeat_ttl_s``.
    """

    def __init__(
        self, store: CacheFallback, *, heartbeat_ttl_s: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._clock = clock
        self._default_ttl = heartbeat_ttl_s
        self._ttls: dict[str, float] = {}

    def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        """Record a worker's beat (in the store's own write transaction: on SQLite it queues behind
        the store's writers on one lock instead of sleeping in SQLite's busy handler)."""
        self._ttls[worker_id] = ttl_s
        self._store.record_heartbeat(worker_id, self._clock())

    def heartbeats(self, worker_ids: Sequence[str], ttl_s: float) -> None:
        """The fallback's beats go one by one: it serves only while Redis is down."""
        for worker_id in worker_ids:
            self.heartbeat(worker_id, ttl_s)

    def last_heartbeat(self, worker_id: str) -> float | None:
        """The worker's last beat while it still counts, else None."""
        at = self._store.heartbeat_at(worker_id)
        if at is None or at + self._ttls.get(worker_id, self._default_ttl) <= self._clock():
            return None
        return float(at)

    def last_heartbeats(self, worker_ids: Sequence[str]) -> dict[str, float]:
        """``last_heartbeat`` of each id, from one read of the table."""
        now = self._clock()
        stored = self._store.heartbeats_at(worker_ids)
        return {w: float(at) for w, at in stored.items() if at + self._ttls.get(w, self._default_ttl) > now}

    def take(self, bucket: str, rate_per_s: float, burst: float) -> float:
        """Take a token from ``bucket``; the seconds to wait first (0: go)."""
        if unlimited(rate_per_s, burst):
            return 0.0
        now = self._clock()

        def step(tokens: float, updated_at: float) -> tuple[float, float]:
            return take_step(refill(tokens, updated_at, now, rate_per_s, burst), rate_per_s, burst)

        return self._store.take_rate_tokens(bucket, burst, now, step)

    def get_status(self, job_id: str) -> tuple[dict[str, Any] | None, StatusTicket]:
        return None, NO_FILL

    def get_statuses(self, job_ids: Sequence[str]) -> list[tuple[dict[str, Any] | None, StatusTicket]]:
        return [(None, NO_FILL)] * len(job_ids)

    def fill_status(self, job_id: str, view: dict[str, Any], ticket: StatusTicket, ttl_s: float) -> bool:
        return False

    def invalidate_status(self, job_ids: Iterable[str]) -> None:
        return None

    def flush_statuses(self) -> None:
        return None

    def ping(self) -> bool:
        try:
            return self._store.ping()
        except sa.exc.SQLAlchemyError:
            return False
