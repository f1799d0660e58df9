"""Workers' heartbeats written to a shared cache in batches, off the event loop.

At 2,000 agents beating every 10 s a replica takes 200 heartbeats a second. Recorded one by one,
each was a Redis round trip made on the event loop, which serves every gRPC call and REST request
meanwhile: on a loaded machine, where Redis answers late, those waits added up to seconds a second,
agents' calls passed their deadlines, and the cache's breaker tripped to the SQL fallback. The
buffer notes a beat in memory and writes all that arrived within ``delay_s`` in one pipelined call
from a thread. A beat is recorded at most ``delay_s`` late against a lapse of three heartbeat
intervals, and the liveness sweep ``flush``es first, so no beat that reached this replica is missed.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from trainyard.cache.base import Cache

log = logging.getLogger(__name__)

BEAT_BATCH_DELAY_S = 0.05


class BeatBuffer:
    """Heartbeats noted on the event loop, written to ``cache`` together soon after."""

    def __init__(self, cache: Cache, ttl_s: float, *, delay_s: float = BEAT_BATCH_DELAY_S) -> None:
        self.cache = cache
        self.ttl_s = ttl_s
        self.delay_s = delay_s
        self._due: dict[str, None] = {}  # worker ids in arrival order, each once
        self._lock = threading.Lock()  # note() runs on the loop, flush() in threads
        self._task: asyncio.Task[None] | None = None

    def note(self, worker_id: str) -> None:
        """A worker beat now (call on the event loop): written within ``delay_s`` or so."""
        with self._lock:
            self._due[worker_id] = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        written = False
        try:
            await asyncio.sleep(self.delay_s)
            await asyncio.to_thread(self.flush)
            written = True
        except Exception:
            # The cache's own fallback handles an unreachable Redis; anything else must not end
            # the buffering: the beats stay due and the next note() tries again.
            log.exception("writing heartbeats failed")
        finally:
            self._task = None
        if written and self.pending:
            # Beats noted while that write was under way: they would otherwise wait for the next
            # note(), an interval later on a replica that few agents beat to.
            self._task = asyncio.get_running_loop().create_task(self._flush_soon())

    def flush(self) -> int:
        """Write every beat noted so far (blocking: any thread); how many."""
        with self._lock:
            ids = list(self._due)
            self._due.clear()
        if ids:
            try:
                self.cache.heartbeats(ids, self.ttl_s)
            except BaseException:
                with self._lock:
                    for worker_id in ids:
                        self._due.setdefault(worker_id, None)
                raise
        return len(ids)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._due)
