"""Redis in front, a fallback behind: the control plane keeps working while Redis is unavailable.

Every call goes to the primary. When it fails with an error of the connection kind the primary is
marked down (one warning), calls go to the fallback, and a background thread probes the primary at
most once per ``probe_interval_s`` while calls keep arriving; once it answers, and any catch-up is
done, it is used again (one info line). No caller ever waits for the probe.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import redis
import redis.exceptions

from trainyard.cache.base import NO_FILL, Cache, LogTailStore, StatusTicket

log = logging.getLogger(__name__)

T = TypeVar("T")

UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # also refused, reset, loading a dataset, too many clients
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica mid-failover
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    OSError,
)
"""Errors that mean "Redis cannot be reached now", as opposed to a bug in a command."""


class CircuitBreaker:
    """Whether the primary is in use, and the probe that brings it back.

    ``recover`` runs on the probe thread: it raises one of ``UNAVAILABLE`` while the primary is
    still down, else does any catch-up. The primary is used again once ``settled()`` (evaluated
    under ``lock``) is true, so state guarded by ``lock`` can be drained completely before.
    """

    def __init__(
        self,
        name: str,
        recover: Callable[[], None],
        *,
        settled: Callable[[], bool] = lambda: True,
        probe_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.lock = threading.Lock()
        self._recover = recover
        self._settled = settled
        self._interval = probe_interval_s
        self._clock = clock
        self._up = True
        self._probing = False
        self._next_probe = 0.0  # time.monotonic()
        self.switched_at: float | None = None
        """Unix time (``clock``) of the last switch in either direction; None before the first."""

    @property
    def up(self) -> bool:
        return self._up

    def allow(self) -> bool:
        """True: use the primary. False: use the fallback (and maybe start a probe)."""
        if self._up:
            return True
        self._maybe_probe()
        return False

    def trip(self, error: BaseException) -> None:
        with self.lock:
            if not self._up:
                return
            self._up = False
            self.switched_at = self._clock()
            self._next_probe = time.monotonic() + self._interval
        log.warning("%s is unavailable (%s); using the fallback until it answers", self.name, error)

    def _maybe_probe(self) -> None:
        with self.lock:
            if self._up or self._probing or time.monotonic() < self._next_probe:
                return
            self._probing = True
            self._next_probe = time.monotonic() + self._interval
        threading.Thread(target=self._probe, name=f"probe {self.name}", daemon=True).start()

    def _probe(self) -> None:
        try:
            while True:
                self._recover()
                with self.lock:
                    if self._settled():
                        self._up = True
                        self.switched_at = self._clock()
                        break
        except UNAVAILABLE:
            return  # still down; the next call after the interval probes again
        except Exception:
            log.exception("probing %s failed; it stays unused", self.name)
            return
        finally:
            with self.lock:
                self._probing = False
        log.info("%s answers again; using it", self.name)


class ResilientCache:
    """``Cache`` on a primary (Redis) with a fallback (``SqlCache``) for while it is down.

    Across a switch:

    * heartbeats: the store switched to may hold older beats than the one left (or none), so for one
      heartbeat TTL after a switch ``last_heartbeat`` answers at least the switch time: no live worker
      is declared dead because of the switch; a dead one is declared so at most one TTL later.
    * status cache: served only by the primary; while it is down every read misses (the caller reads
      the database). Invalidations that could not reach it are remembered (up to ``max_pending``
      ids) and applied before it serves again; beyond that every cached view is flushed instead.
    * token buckets: each store keeps its own, so a switch may grant up to one extra burst.
    """

    def __init__(
        self,
        primary: Cache,
        fallback: Cache,
        *,
        heartbeat_ttl_s: float = 30.0,
        probe_interval_s: float = 1.0,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.time,
        name: str = "Redis cache",
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._clock = clock
        self._hb_ttl = heartbeat_ttl_s
        self._max_pending = max_pending
        self._pending: set[str] = set()
        self._overflow = False  # more invalidations were missed than remembered: flush all
        self._breaker = CircuitBreaker(
            name, self._recover, settled=self._caught_up, probe_interval_s=probe_interval_s, clock=clock
        )

    @property
    def primary_up(self) -> bool:
        return self._breaker.up

    def _call(self, op: Callable[[Cache], T]) -> T:
        if self._breaker.allow():
            try:
                return op(self._primary)
            except UNAVAILABLE as e:
                self._breaker.trip(e)
        return op(self._fallback)

    # ---- heartbeats and buckets ----------------------------------------------------------------
    def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        self._hb_ttl = ttl_s
        self._call(lambda c: c.heartbeat(worker_id, ttl_s))

    def heartbeats(self, worker_ids: Sequence[str], ttl_s: float) -> None:
        self._hb_ttl = ttl_s
        self._call(lambda c: c.heartbeats(worker_ids, ttl_s))

    def last_heartbeat(self, worker_id: str) -> float | None:
        at = self._call(lambda c: c.last_heartbeat(worker_id))
        switched = self._breaker.switched_at
        if switched is not None and self._clock() - switched < self._hb_ttl:
            return switched if at is None else max(at, switched)
        return at

    def last_heartbeats(self, worker_ids: Sequence[str]) -> dict[str, float]:
        got = self._call(lambda c: c.last_heartbeats(worker_ids))
        switched = self._breaker.switched_at
        if switched is not None and self._clock() - switched < self._hb_ttl:
            # Just switched stores: as ``last_heartbeat``, everyone counts as beating at the switch.
            return {w: max(got.get(w, switched), switched) for w in worker_ids}
        return got

    def take(self, bucket: str, rate_per_s: float, burst: float) -> float:
        return self._call(lambda c: c.take(bucket, rate_per_s, burst))

    def ping(self) -> bool:
        """Whether the store now serving answers; a primary that does not is switched away from."""
        if self._breaker.allow():
            if self._primary.ping():
                return True
            self._breaker.trip(redis.exceptions.ConnectionError("no answer to PING"))
        return self._fallback.ping()

    # ---- status cache --------------------------------------------------------------------------
    def get_status(self, job_id: str) -> tuple[dict[str, Any] | None, StatusTicket]:
        if self._breaker.allow():
            try:
                return self._primary.get_status(job_id)
            except UNAVAILABLE as e:
                self._breaker.trip(e)
        return None, NO_FILL

    def get_statuses(self, job_ids: Sequence[str]) -> list[tuple[dict[str, Any] | None, StatusTicket]]:
        """``get_status`` of each id, in one call to the primary (``RedisCache.get_statuses``)."""
        if self._breaker.allow():
            try:
                return self._primary.get_statuses(job_ids)
            except UNAVAILABLE as e:
                self._breaker.trip(e)
        return [(None, NO_FILL)] * len(job_ids)

    def fill_status(self, job_id: str, view: dict[str, Any], ticket: StatusTicket, ttl_s: float) -> bool:
        if ticket.generation is None or not self._breaker.allow():
            return False
        try:
            return self._primary.fill_status(job_id, view, ticket, ttl_s)
        except UNAVAILABLE as e:
            self._breaker.trip(e)
            return False

    def invalidate_status(self, job_ids: Iterable[str]) -> None:
        ids = list(dict.fromkeys(job_ids))
        while ids:
            if self._breaker.allow():
                try:
                    self._primary.invalidate_status(ids)
                    return
                except UNAVAILABLE as e:
                    self._breaker.trip(e)
            with self._breaker.lock:
                # Checked under the lock the probe settles under: remembered ids are always
                # applied before the primary serves again. If it came back meanwhile, go there.
                if not self._breaker.up:
                    self._remember(ids)
                    return

    def flush_statuses(self) -> None:
        while True:
            if self._breaker.allow():
                try:
                    self._primary.flush_statuses()
                    return
                except UNAVAILABLE as e:
                    self._breaker.trip(e)
            with self._breaker.lock:
                if not self._breaker.up:
                    self._pending.clear()
                    self._overflow = True
                    return

    def _remember(self, ids: Iterable[str]) -> None:
        if self._overflow:
            return
        self._pending.update(ids)
        if len(self._pending) > self._max_pending:
            self._pending.clear()
            self._overflow = True

    def _caught_up(self) -> bool:
        return not self._pending and not self._overflow

    def _recover(self) -> None:
        if not self._primary.ping():
            raise redis.exceptions.ConnectionError("no answer to PING")
        with self._breaker.lock:
            batch, flush = self._pending, self._overflow
            self._pending, self._overflow = set(), False
        try:
            if flush:
                self._primary.flush_statuses()
            elif batch:
                self._primary.invalidate_status(batch)
        except BaseException:
            with self._breaker.lock:
                if flush:
                    self._pending.clear()
                    self._overflow = True
                else:
                    self._remember(batch)
            raise


class _PrimaryTails(LogTailStore, Protocol):
    def ping(self) -> bool: ...


class ResilientLogTails:
    """``LogTailStore`` on a primary (Redis) with a fallback (the in-memory ``LogTails``).

    While the primary is down, pushes land in this process's memory only, so followers on other
    replicas see sealed chunks but no live tail until it is back. Bytes pushed during the outage are
    not copied back: the next push after the switch starts a new run in the primary (a gap that the
    sealed chunks cover).
    """

    def __init__(
        self,
        primary: _PrimaryTails,
        fallback: LogTailStore,
        *,
        probe_interval_s: float = 1.0,
        name: str = "Redis log tail",
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._breaker = CircuitBreaker(name, self._recover, probe_interval_s=probe_interval_s)

    @property
    def primary_up(self) -> bool:
        return self._breaker.up

    def _call(self, op: Callable[[LogTailStore], T]) -> T:
        if self._breaker.allow():
            try:
                return op(self._primary)
            except UNAVAILABLE as e:
                self._breaker.trip(e)
        return op(self._fallback)

    def append(self, job_id: str, attempt: int, offset: int, data: bytes) -> int:
        return self._call(lambda t: t.append(job_id, attempt, offset, data))

    def read(self, job_id: str, attempt: int, since: int) -> tuple[int, bytes]:
        return self._call(lambda t: t.read(job_id, attempt, since))

    def end(self, job_id: str, attempt: int) -> int | None:
        return self._call(lambda t: t.end(job_id, attempt))

    def mark_ended(self, job_id: str, attempt: int) -> None:
        self._call(lambda t: t.mark_ended(job_id, attempt))

    def follow(self, job_id: str, attempt: int, follower: str, ttl_s: float, resend_s: float) -> bool:
        return self._call(lambda t: t.follow(job_id, attempt, follower, ttl_s, resend_s))

    def unfollow(self, job_id: str, attempt: int, follower: str) -> bool:
        return self._call(lambda t: t.unfollow(job_id, attempt, follower))

    async def wait(self, job_id: str, attempt: int, timeout: float, since: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._breaker.allow():
            try:
                await self._primary.wait(job_id, attempt, timeout, since)
                return
            except UNAVAILABLE as e:
                self._breaker.trip(e)
        await self._fallback.wait(job_id, attempt, max(0.0, deadline - loop.time()), since)

    def _recover(self) -> None:
        if not self._primary.ping():
            raise redis.exceptions.ConnectionError("no answer to PING")
