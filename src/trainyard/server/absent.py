"""The reconciler's check for RUNNING attempts that their worker, alive and heartbeating, no longer runs.

Such an attempt is one whose agent lost it without a word: the attempt crashed inside the agent, or
its final report was refused and every fallback failed. Nothing else would end it before its
max_runtime (24 h by default), and it would hold its resources all that while.

Every heartbeat lists every attempt its worker runs, so the evidence is simple: ``ABSENT_BEATS``
heartbeats in a row from the attempt's worker that do not list it, all received after the attempt
was known to be RUNNING (so after the worker had accepted it) and after the last heartbeat that did
list it. One heartbeat built just before the worker accepted the attempt may arrive late; the
others cannot, as the agent sends one heartbeat at a time. Such an attempt ends LOST, and the
retry policy treats it as an infrastructure failure.

The evidence is what this replica received. A worker whose heartbeats reach only another replica
gives none here, so nothing is closed on its account: the check errs on the side of leaving a job.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from trainyard.model.records import LiveAttempt
from trainyard.model.states import JobStatus

log = logging.getLogger("trainyard.reconciler")

ABSENT_BEATS = 3
"""Consecutive heartbeats without an attempt that make it lost."""
_FORGET_WORKER_BEATS = 100
"""A worker silent for this many intervals is forgotten (it is dead, or heartbeats elsewhere)."""

AttemptKey = tuple[str, int]


class AbsentAttempts:
    """Heartbeat evidence per worker and attempt; fed by the worker service, read by the reconciler
    (in its own thread, hence the lock)."""

    def __init__(self, beats: int = ABSENT_BEATS) -> None:
        self.beats = max(2, beats)
        self._lock = threading.Lock()
        self._worker_beats: dict[str, deque[float]] = {}  # worker -> receipt times of its last beats
        self._listed: dict[AttemptKey, float] = {}  # attempt -> last heartbeat that listed it
        self._running_since: dict[AttemptKey, float] = {}  # attempt -> first seen RUNNING here

    def heartbeat(self, worker_id: str, running: Sequence[tuple[str, int, str]], now: float) -> None:
        """A heartbeat from ``worker_id``, received at ``now``, listed these attempts."""
        with self._lock:
            beats = self._worker_beats.get(worker_id)
            if beats is None:
                beats = self._worker_beats[worker_id] = deque(maxlen=self.beats)
            beats.append(now)
            for job_id, attempt, _ in running:
                self._listed[(job_id, attempt)] = now

    def absent(self, live: Sequence[LiveAttempt], now: float, interval: float) -> list[LiveAttempt]:
        """The RUNNING attempts among ``live`` (every live attempt) that their worker no longer runs."""
        out = []
        with self._lock:
            seen: dict[AttemptKey, float] = {}
            for a in live:
                if a.status is not JobStatus.RUNNING or not a.worker_id:
                    continue
                key = (a.job_id, a.attempt)
                seen[key] = self._running_since.get(key, now)
                beats = self._worker_beats.get(a.worker_id)
                if beats is None or len(beats) < self.beats:
                    continue
                since = max(seen[key], self._listed.get(key, 0.0))
                if beats[0] > since and now - since >= self.beats * interval:
                    out.append(a)
            # Only live RUNNING attempts need remembering: the rest ended or have not started.
            self._running_since = seen
            self._listed = {k: t for k, t in self._listed.items() if k in seen or now - t < 10 * interval}
            stale = now - _FORGET_WORKER_BEATS * interval
            for worker_id in [w for w, b in self._worker_beats.items() if b[-1] < stale]:
                del self._worker_beats[worker_id]
        return out

    def reconcile(
        self,
        live: Callable[[], Sequence[LiveAttempt]],
        lose: Callable[[str, int, str, str], bool],
        now: float,
        interval: float,
    ) -> list[str]:
        """Close every absent attempt as LOST through ``lose`` (the store's guarded transition);
        returns the jobs closed."""
        with self._lock:
            if not self._worker_beats:
                return []
        closed = []
        for a in self.absent(live(), now, interval):
            reason = (
                f"worker {a.worker_id} stopped listing the attempt in its heartbeats "
                "(the agent lost it without a final report)"
            )
            if lose(a.job_id, a.attempt, a.lease_token or "", reason):
                log.warning(
                    "job %s attempt %d: worker %s no longer runs it; closed as lost",
                    a.job_id,
                    a.attempt,
                    a.worker_id,
                )
                closed.append(a.job_id)
        return closed
