"""Hot keys: worker heartbeats, rate limits, the job-status cache and live log tails.

Two small ports, ``Cache`` and ``LogTailStore``, each with an in-memory implementation (the embedded
default and a fake for users' tests), a Redis one, and for ``Cache`` a SQL fallback; ``resilient``
puts Redis in front of a fallback so the control plane keeps working while Redis is down.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

STATUS_TTL_S = 24 * 3600.0
"""How long a cached job view lives; an invalidation removes it sooner."""

GENERATION_TTL_S = STATUS_TTL_S + 3600.0
"""A status generation must outlive every view filled under it, or a lapsed counter restarting at
zero could let a reader holding a day-old ticket store a stale view."""

# A refill that lands a hair under one token because of float rounding still counts: otherwise a
# caller that sleeps exactly the wait it was told would be refused once more.
TOKEN_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class StatusTicket:
    """What a reader of the status cache saw before it read the database. Opaque to callers.

    ``fill_status`` stores the reader's view only if no invalidation (``generation``) and no flush
    (``epoch``) happened since, so a view read before a commit can never overwrite the invalidation
    that followed the commit. ``generation`` None: this ticket can fill nothing.
    """

    generation: int | None
    epoch: int = 0


NO_FILL = StatusTicket(None)


class Cache(Protocol):
    """Heartbeats, token buckets and the job-status cache. Thread-safe; every call is short."""

    def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        """Record that a worker is alive now; the record lapses after ``ttl_s``."""
        ...

    def heartbeats(self, worker_ids: Sequence[str], ttl_s: float) -> None:
        """``heartbeat`` for each of these workers, in as few round trips as the backend allows (a
        control plane with 2,000 agents takes 200 beats a second; see ``server.beats``)."""
        ...

    def last_heartbeat(self, worker_id: str) -> float | None:
        """Unix time of the worker's last beat, or None when it has lapsed or never existed."""
        ...

    def last_heartbeats(self, worker_ids: Sequence[str]) -> dict[str, float]:
        """``last_heartbeat`` of each id in as few round trips as the backend allows: the ids whose
        beat has not lapsed, with its time (a scheduler cycle or a liveness sweep asks for every
        worker at once: one round trip each was seconds at 2,000 workers on a loaded machine)."""
        ...

    def take(self, bucket: str, rate_per_s: float, burst: float) -> float:
        """Token bucket: 0.0 when a token was taken, else seconds until one will be available.

        A new bucket starts full (``burst`` tokens) and refills at ``rate_per_s``. Infinite seconds
        when no token can ever come (``burst`` < 1, or no refill and none left). A non-finite rate
        or burst means unlimited: a token is always given.
        """
        ...

    def get_status(self, job_id: str) -> tuple[dict[str, Any] | None, StatusTicket]:
        """The cached view of a job (None on a miss) and the ticket a later fill must present."""
        ...

    def get_statuses(self, job_ids: Sequence[str]) -> list[tuple[dict[str, Any] | None, StatusTicket]]:
        """``get_status`` of each id, in order, in as few round trips as the backend allows."""
        ...

    def fill_status(self, job_id: str, view: dict[str, Any], ticket: StatusTicket, ttl_s: float) -> bool:
        """Cache ``view`` unless the job was invalidated since ``ticket`` was issued. True if stored."""
        ...

    def invalidate_status(self, job_ids: Iterable[str]) -> None:
        """After a commit that changed these jobs: drop their views and refuse fills begun before."""
        ...

    def flush_statuses(self) -> None:
        """Drop every cached view and refuse every fill begun before."""
        ...

    def ping(self) -> bool:
        """True when the backend answers."""
        ...


class LogTailStore(Protocol):
    """The newest bytes of each attempt's log, for followers that should not wait for a sealed chunk.

    Offsets are byte offsets in the attempt's log. The tail holds one contiguous run of bytes; a
    push that leaves a gap restarts it (the sealed chunks in object storage cover the gap).
    """

    def append(self, job_id: str, attempt: int, offset: int, data: bytes) -> int:
        """Accept bytes at ``offset``; overlap with what is held is ignored. Returns the held end."""
        ...

    def read(self, job_id: str, attempt: int, since: int) -> tuple[int, bytes]:
        """(offset of the returned bytes, bytes) from ``since`` on, as far as the tail holds them."""
        ...

    def end(self, job_id: str, attempt: int) -> int | None:
        """Offset just past the held bytes, or None when nothing was ever pushed or marked."""
        ...

    def mark_ended(self, job_id: str, attempt: int) -> None:
        """No more output will come; wakes waiters, and the tail is kept a shorter while."""
        ...

    async def wait(self, job_id: str, attempt: int, timeout: float, since: int | None = None) -> None:
        """Return when the tail changes (with ``since``: holds bytes past it, or is ended) or at
        ``timeout``. Returns at once when that already holds. May return early: callers re-read."""
        ...

    def follow(self, job_id: str, attempt: int, follower: str, ttl_s: float, resend_s: float) -> bool:
        """``follower`` (one connected reader, on any replica) follows the attempt for ``ttl_s``
        more seconds. True when the agent must be asked (again) to push live bytes: at most once per
        ``resend_s`` across all followers of the attempt, so a crowd of followers asks as one."""
        ...

    def unfollow(self, job_id: str, attempt: int, follower: str) -> bool:
        """``follower`` left; True when nobody follows the attempt any more (stop the agent)."""
        ...


def unlimited(rate_per_s: float, burst: float) -> bool:
    return not (math.isfinite(rate_per_s) and math.isfinite(burst))


def refill(tokens: float, updated: float, now: float, rate_per_s: float, burst: float) -> float:
    """Tokens in a bucket at ``now``. A clock that stepped back adds nothing, never takes away."""
    return min(burst, tokens + max(0.0, now - updated) * rate_per_s)


def take_step(tokens: float, rate_per_s: float, burst: float) -> tuple[float, float]:
    """(tokens left, seconds to wait) after one take from a bucket holding ``tokens``.

    The Redis Lua script mirrors this arithmetic; keep them in step.
    """
    if tokens >= 1.0 - TOKEN_EPSILON:
        return max(0.0, tokens - 1.0), 0.0
    if burst < 1.0 or rate_per_s <= 0.0:
        return tokens, math.inf
    # Plus a microsecond: unix times near 1.7e9 are only exact to ~0.2 us, so a caller who waits
    # exactly the computed time may land a rounding error short of the token.
    return tokens, (1.0 - tokens) / rate_per_s + 1e-6
