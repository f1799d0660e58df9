"""In-process cache: the embedded default, and a supported fake for users' tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class MemoryCache:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._beats: dict[str, tuple[float, float]] = {}  # worker -> (at, expires)
        self._buckets: dict[str, tuple[float, float]] = {}  # bucket -> (tokens, updated)

    def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        now = self._clock()
        with self._lock:
            self._beats[worker_id] = (now, now + ttl_s)

    def last_heartbeat(self, worker_id: str) -> float | None:
        with self._lock:
            entry = self._beats.get(worker_id)
        if entry is None or entry[1] < self._clock():
            return None
        return entry[0]

    def take(self, bucket: str, rate_per_s: float, burst: float) -> float:
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.get(bucket, (burst, now))
            tokens = min(burst, tokens + (now - updated) * rate_per_s)
            if tokens >= 1.0:
                self._buckets[bucket] = (tokens - 1.0, now)
                return 0.0
            self._buckets[bucket] = (tokens, now)
            return (1.0 - tokens) / rate_per_s if rate_per_s > 0 else float("inf")
