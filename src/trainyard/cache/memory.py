"""In-process cache: the embedded default, and a supported fake for users' tests.

It keeps the same semantics as the Redis cache, down to views round-tripping through JSON, so code
tested against it behaves the same in production.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from trainyard.cache.base import GENERATION_TTL_S, StatusTicket, refill, take_step, unlimited

_SWEEP_EVERY_S = 60.0


class MemoryCache:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._beats: dict[str, tuple[float, float]] = {}  # worker -> (at, expires)
        self._buckets: dict[str, tuple[float, float]] = {}  # bucket -> (tokens, updated)
        self._views: dict[str, tuple[str, float]] = {}  # job -> (view as JSON, expires)
        self._gens: dict[str, tuple[int, float]] = {}  # job -> (generation, expires)
        self._epoch = 0
        self._swept = clock()

    def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        now = self._clock()
        with self._lock:
            self._beats[worker_id] = (now, now + ttl_s)
            self._sweep(now)

    def heartbeats(self, worker_ids: Sequence[str], ttl_s: float) -> None:
        now = self._clock()
        with self._lock:
            for worker_id in worker_ids:
                self._beats[worker_id] = (now, now + ttl_s)
            self._sweep(now)

    def last_heartbeat(self, worker_id: str) -> float | None:
        with self._lock:
            entry = self._beats.get(worker_id)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def last_heartbeats(self, worker_ids: Sequence[str]) -> dict[str, float]:
        now = self._clock()
        with self._lock:
            entries = [(w, self._beats.get(w)) for w in worker_ids]
        return {w: e[0] for w, e in entries if e is not None and e[1] > now}

    def take(self, bucket: str, rate_per_s: float, burst: float) -> float:
        if unlimited(rate_per_s, burst):
            return 0.0
        now = self._clock()
        with self._lock:
            held = self._buckets.get(bucket)
            tokens = burst if held is None else refill(held[0], held[1], now, rate_per_s, burst)
            left, wait = take_step(tokens, rate_per_s, burst)
            self._buckets[bucket] = (left, now if held is None else max(now, held[1]))
        return wait

    # ---- status cache --------------------------------------------------------------------------
    def get_status(self, job_id: str) -> tuple[dict[str, Any] | None, StatusTicket]:
        now = self._clock()
        with self._lock:
            ticket = StatusTicket(self._generation(job_id, now), self._epoch)
            entry = self._views.get(job_id)
        if entry is None or entry[1] <= now:
            return None, ticket
        view: dict[str, Any] = json.loads(entry[0])
        return view, ticket

    def get_statuses(self, job_ids: Sequence[str]) -> list[tuple[dict[str, Any] | None, StatusTicket]]:
        return [self.get_status(job_id) for job_id in job_ids]

    def fill_status(self, job_id: str, view: dict[str, Any], ticket: StatusTicket, ttl_s: float) -> bool:
        if ticket.generation is None:
            return False
        raw = json.dumps(view, separators=(",", ":"))
        now = self._clock()
        with self._lock:
            if self._generation(job_id, now) != ticket.generation or self._epoch != ticket.epoch:
                return False
            self._views[job_id] = (raw, now + ttl_s)
            self._sweep(now)
        return True

    def invalidate_status(self, job_ids: Iterable[str]) -> None:
        now = self._clock()
        with self._lock:
            for job_id in job_ids:
                self._gens[job_id] = (self._generation(job_id, now) + 1, now + GENERATION_TTL_S)
                self._views.pop(job_id, None)
            self._sweep(now)

    def flush_statuses(self) -> None:
        with self._lock:
            self._epoch += 1
            self._views.clear()

    def ping(self) -> bool:
        return True

    def _generation(self, job_id: str, now: float) -> int:
        entry = self._gens.get(job_id)
        return 0 if entry is None or entry[1] <= now else entry[0]

    def _sweep(self, now: float) -> None:
        """Drop lapsed entries now and then, so a long-lived process does not grow without bound."""
        if now - self._swept < _SWEEP_EVERY_S:
            return
        self._swept = now
        for table in (self._beats, self._views, self._gens):
            for key in [k for k, v in table.items() if v[1] <= now]:
                del table[key]
