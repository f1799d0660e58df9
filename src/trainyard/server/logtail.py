"""The live tail of each attempt's log, held by the control plane for followers.

Workers push the bytes of followed attempts as they are printed (``follow`` says who follows);
sealed chunks in object storage are the durable copy of every attempt. The tail keeps the newest
``cap`` bytes of each followed attempt so a follower never waits for a seal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field


@dataclass
class _Tail:
    base: int = 0  # offset of buf[0] in the attempt's log
    buf: bytearray = field(default_factory=bytearray)
    ended_at: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def end(self) -> int:
        return self.base + len(self.buf)


class LogTails:
    """``LogTailStore`` in memory, for one control-plane process (``cache.redis_tail`` shares one
    across replicas). Loop-bound: every method runs on the control plane's event loop."""

    def __init__(self, cap: int = 4 << 20, keep_ended_s: float = 3600.0) -> None:
        self._cap = cap
        self._keep = keep_ended_s
        self._tails: dict[tuple[str, int], _Tail] = {}
        self._last_evict = 0.0
        self._followers: dict[tuple[str, int], dict[str, float]] = {}  # follower -> until (monotonic)
        self._asked: dict[tuple[str, int], float] = {}  # when the agent may be asked again
        self._last_prune = 0.0

    def _get(self, job_id: str, attempt: int) -> _Tail:
        key = (job_id, attempt)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = _Tail()
        return tail

    def append(self, job_id: str, attempt: int, offset: int, data: bytes) -> int:
        """Accept bytes at ``offset``; overlap with what is held is ignored. Returns the held end."""
        tail = self._get(job_id, attempt)
        if not tail.buf and tail.base == 0 and offset > 0:
            tail.base = offset  # first push after a control-plane restart: start where the worker is
        if offset > tail.end:
            # A gap (bytes we never got): restart the tail at the new offset; sealed chunks cover it.
            tail.buf.clear()
            tail.base = offset
        skip = tail.end - offset
        if skip < len(data):
            tail.buf += data[skip:]
            if len(tail.buf) > self._cap:
                drop = len(tail.buf) - self._cap
                del tail.buf[:drop]
                tail.base += drop
            self._wake(tail)
        return tail.end

    def read(self, job_id: str, attempt: int, since: int) -> tuple[int, bytes]:
        """(offset of the returned bytes, bytes) from ``since`` on, as far as the tail holds them."""
        tail = self._tails.get((job_id, attempt))
        if tail is None or since >= tail.end:
            return since, b""
        start = max(since, tail.base)
        return start, bytes(tail.buf[start - tail.base :])

    def end(self, job_id: str, attempt: int) -> int | None:
        """The offset just past the attempt's live bytes; None when this replica holds none."""
        tail = self._tails.get((job_id, attempt))
        return None if tail is None else tail.end

    def mark_ended(self, job_id: str, attempt: int) -> None:
        """The attempt ended: wake its followers; its tail is evicted after ``keep_ended_s``."""
        tail = self._get(job_id, attempt)
        tail.ended_at = time.monotonic()
        self._wake(tail)
        self._evict()

    async def wait(self, job_id: str, attempt: int, timeout: float, since: int | None = None) -> None:
        """Return when the tail changes (with ``since``: holds bytes past it, or is ended) or at
        ``timeout``. Returns at once when that already holds. May return early: callers re-read."""
        tail = self._get(job_id, attempt)
        if since is not None and (tail.end > since or tail.ended_at is not None):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tail.changed.wait(), timeout)

    def follow(self, job_id: str, attempt: int, follower: str, ttl_s: float, resend_s: float) -> bool:
        """``follower`` follows the attempt for ``ttl_s``; True when the agent must be asked (again)."""
        now = time.monotonic()
        key = (job_id, attempt)
        self._prune_followers(now)
        self._followers.setdefault(key, {})[follower] = now + ttl_s
        if self._asked.get(key, -1.0) > now:
            return False
        self._asked[key] = now + resend_s
        return True

    def unfollow(self, job_id: str, attempt: int, follower: str) -> bool:
        """``follower`` left; True when nobody follows the attempt any more."""
        key = (job_id, attempt)
        followers = self._followers.get(key, {})
        followers.pop(follower, None)
        now = time.monotonic()
        if any(until > now for until in followers.values()):
            return False
        self._followers.pop(key, None)
        self._asked.pop(key, None)
        return True

    def _prune_followers(self, now: float) -> None:
        # Followers that vanished without unfollowing (a replica crash) expire with their ttl.
        if now - self._last_prune < 10.0:
            return
        self._last_prune = now
        for key in list(self._followers):
            alive = {f: u for f, u in self._followers[key].items() if u > now}
            if alive:
                self._followers[key] = alive
            else:
                del self._followers[key]
                self._asked.pop(key, None)

    def _wake(self, tail: _Tail) -> None:
        tail.changed.set()
        tail.changed = asyncio.Event()

    def _evict(self) -> None:
        now = time.monotonic()
        if now - self._last_evict < 10.0:
            return
        self._last_evict = now
        cutoff = now - self._keep
        for key in [k for k, t in self._tails.items() if t.ended_at is not None and t.ended_at < cutoff]:
            del self._tails[key]
