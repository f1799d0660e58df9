"""The reconciler: the leader's repair loop over what the happy path leaves behind.

Dead workers' attempts become LOST (then retried or failed), leases that never reached their
worker are requeued, attempts a live worker stopped listing are closed as lost, overdue runs time
out, and cancels that no worker confirmed are finished."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa

from trainyard.cache.base import Cache
from trainyard.model.records import LiveAttempt
from trainyard.model.states import JobStatus
from trainyard.server.absent import AbsentAttempts
from trainyard.server.metrics import Metrics
from trainyard.server.services.auth import AuthService
from trainyard.server.services.replica import Replica
from trainyard.server.silence import MassSilence

if TYPE_CHECKING:
    from trainyard.server.beats import BeatBuffer
    from trainyard.store.ports import ReconcileStore

log = logging.getLogger("trainyard.server")

HEARTBEAT_PERSIST_S = 5.0
"""How often the workers table's copy of the heartbeats (for display) is refreshed from the cache."""


class Reconciler:
    """One reconciliation pass at a time (``reconcile_once`` is blocking: run it in a thread);
    heartbeats tell it which attempts each worker holds (``heartbeat``, from the event loop)."""

    def __init__(
        self,
        store: ReconcileStore,
        cache: Cache,
        replica: Replica,
        auth: AuthService,
        metrics: Metrics,
        *,
        heartbeat_interval: float,
        cancel_grace: float,
        restart_grace: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.cache = cache
        self.replica = replica
        self.auth = auth
        self.metrics = metrics
        self.heartbeat_interval = heartbeat_interval
        self.cancel_grace = cancel_grace
        self.restart_grace = restart_grace
        self.clock = clock
        self.absent = AbsentAttempts()  # RUNNING attempts a live worker stopped listing
        self._held: dict[tuple[str, int], float] = {}  # (job, attempt) -> last heartbeat that listed it
        self._beats_persisted = 0.0
        self._beats_written: dict[str, float] = {}
        """The heartbeat times last written to the workers table, by worker."""
        self._store_down = False
        self.beats: BeatBuffer | None = None
        """The fleet's batched beats (where the cache is shared), written out before a sweep reads."""
        # Many workers silent at once: held for up to six heartbeats (or the restart grace) before
        # they are declared dead (see trainyard.server.silence).
        self.silence = MassSilence(hold_s=max(6 * heartbeat_interval, restart_grace))

    def heartbeat(self, worker_id: str, running: Sequence[tuple[str, int, str]]) -> None:
        """A heartbeat listed these attempts (job, attempt, lease token): their worker has them,
        even if not started yet."""
        now = self.clock()
        for job_id, attempt, _ in running:
            self._held[(job_id, attempt)] = now
        self.absent.heartbeat(worker_id, running, now)

    def reconcile_once(self) -> list[str]:
        """Dead workers' attempts → LOST (then retried or failed); overdue runs; unconfirmed cancels.
        Returns the jobs it changed."""
        now = self.clock()
        touched = self._dead_workers(now)
        grace = self.cancel_grace + 2 * self.heartbeat_interval
        # One read of the live attempts for both checks (10,000 rows at the target scale, every half
        # heartbeat): an attempt the first closes is refused by the second's guarded transition.
        live = self.store.live_attempts()
        touched += self._requeue_undelivered(now, live)
        touched += self.absent.reconcile(lambda: live, self.store.lose_attempt, now, self.heartbeat_interval)
        touched += self.store.expire_overdue(now, grace)
        touched += self.store.finish_stuck_cancels(now, grace + 30)
        return touched

    def _dead_workers(self, now: float) -> list[str]:
        """Workers past their heartbeats are declared dead (their attempts LOST); the others' last
        beats are copied to the table now and then."""
        touched: list[str] = []
        beats: dict[str, float] = {}
        try:
            alive = self.store.list_workers(include_dead=False)
        except sa.exc.DBAPIError:
            self._store_down = True
            raise
        if self._store_down:
            self._store_down = False
            self.replica.store_back(now)
            log.warning("state store reachable again; workers get %gs to check in", self.restart_grace)
        if self.beats is not None:
            self.beats.flush()
        cached = self.cache.last_heartbeats([w.id for w in alive])
        silent = []
        for w in alive:
            last = cached.get(w.id)
            if last is not None:
                beats[w.id] = last
            elif not self.replica.alive_with(None, w.registered_at):
                silent.append(w)
        held = self.silence.hold(len(silent), len(alive), now)
        if held:
            log.warning(
                "%d of %d workers missed their heartbeats at once: taken as the control plane's fault, "
                "their declaration is held (for up to %.0fs)",
                len(silent),
                len(alive),
                self.silence.hold_s,
            )
            self.metrics.liveness_held.inc()
        for w in [] if held else silent:
            log.warning("worker %s (%s) missed its heartbeats; declaring it dead", w.name, w.id)
            self.metrics.heartbeats_missed.inc()
            touched += self.store.mark_worker_dead(w.id)
            self.auth.forget_worker(w.id)
        # Heartbeats live in the cache; the table's copy is for display, so refresh it only now and then.
        if now - self._beats_persisted >= HEARTBEAT_PERSIST_S:
            # Only the beats that moved since they were last written (about half of them, with
            # beats every 10 s and writes every 5 s); a failed write leaves them due next time.
            moved = {w: at for w, at in beats.items() if self._beats_written.get(w) != at}
            self.store.touch_workers(moved)
            self._beats_written = beats
            self._beats_persisted = now
        return touched

    def _requeue_undelivered(self, now: float, live: Sequence[LiveAttempt]) -> list[str]:
        """A lease whose worker never mentions it (the assignment was lost on the way) is an
        infrastructure failure after a few heartbeats, not a job stuck in SCHEDULED forever."""
        window = 3 * self.heartbeat_interval + 5.0
        stuck = [
            a
            for a in live
            if a.status is JobStatus.SCHEDULED
            and now - self._held.get((a.job_id, a.attempt), 0.0) > window
            and now - a.scheduled_at > window
            and now - self.replica.leader_since > window
        ]
        out = []
        for a in stuck:
            if self.store.requeue_undelivered(a.job_id, a.attempt, a.lease_token):
                log.warning(
                    "job %s attempt %d never reached worker %s; requeued", a.job_id, a.attempt, a.worker_id
                )
                out.append(a.job_id)
        if len(self._held) > 100_000:
            # Runs in the reconciler's thread while heartbeats add entries: iterate over a copy.
            self._held = {k: v for k, v in list(self._held.items()) if now - v < window}
        return out
