from __future__ import annotations

from typing import Protocol


class Cache(Protocol):
    def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        """Record that a worker is alive; the key lapses after ``ttl_s``."""
        ...

    def last_heartbeat(self, worker_id: str) -> float | None:
        """When the worker last beat, or None when its key has lapsed or never existed."""
        ...

    def take(self, bucket: str, rate_per_s: float, burst: float) -> float:
        """Token bucket: 0.0 when a token was taken, else seconds until one is available."""
        ...
