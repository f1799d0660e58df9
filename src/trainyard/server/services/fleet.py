"""The fleet: workers registering, beating and draining, and the views of workers and queues."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trainyard.cache.base import Cache
from trainyard.model.records import User, Worker
from trainyard.server.beats import BeatBuffer
from trainyard.server.commandgate import CommandGate
from trainyard.server.hub import Kick
from trainyard.server.metrics import Metrics
from trainyard.server.services.auth import AuthService
from trainyard.server.services.blocking import off_loop
from trainyard.server.services.dispatch import Dispatcher
from trainyard.server.services.reconcile import Reconciler
from trainyard.server.services.replica import Replica
from trainyard.server.views import worker_json
from trainyard.store import WorkerCommand

if TYPE_CHECKING:
    from trainyard.store.ports import FleetStore

DRAIN_PREEMPT_REASON = "preempted: the worker is being drained"


@dataclasses.dataclass(frozen=True)
class Beat:
    """What one heartbeat says: the attempts the worker runs (job, attempt, lease token), when each
    last wrote a checkpoint, whether the agent drains itself, and what its data cache holds."""

    running: Sequence[tuple[str, int, str]]
    checkpoints: Sequence[tuple[str, int, float]] = ()
    draining: bool = False
    cached_uris: Sequence[str] | None = None
    gpu_utilization: Mapping[int, float] = dataclasses.field(default_factory=dict)


class FleetService:
    """Workers' registration, heartbeats and drains; the fleet and queue views."""

    def __init__(
        self,
        store: FleetStore,
        cache: Cache,
        replica: Replica,
        auth: AuthService,
        reconciler: Reconciler,
        dispatcher: Dispatcher,
        metrics: Metrics,
        *,
        heartbeat_interval: float,
        kick_scheduler: Kick,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.cache = cache
        self.replica = replica
        self.auth = auth
        self.reconciler = reconciler
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.heartbeat_interval = heartbeat_interval
        self.kick_scheduler = kick_scheduler
        self.clock = clock
        self.monotonic = monotonic
        # Most heartbeats change nothing: the gate spares them the store read of their commands.
        self.commands = CommandGate()
        self._cached_uris: dict[str, tuple[str, ...]] = {}  # worker -> data cache as last written
        self._checkpoints: dict[tuple[str, int], float] = {}  # (job, attempt) -> checkpoint time written
        self.beats: BeatBuffer | None = None
        """Set where the cache is shared (Redis): beats are then written in batches, off the loop."""

    # ---- registration and heartbeats -------------------------------------------------------------
    async def register(self, *, cached_uris: Iterable[str] | None, **fields: Any) -> tuple[Worker, str]:
        """A worker agent (re)registers: its record and its new credential."""
        worker, credential = await off_loop(self.store.register_worker, **fields)
        self.auth.forget_worker(worker.id)
        self.commands.forget(worker.id)
        if cached_uris is not None:
            await self.note_cached_uris(worker.id, cached_uris)
        self.auth.remember_worker(credential, worker)
        self.cache.heartbeat(worker.id, 3 * self.heartbeat_interval)
        self.kick_scheduler.set()
        return worker, credential

    async def heartbeat(self, worker: Worker, beat: Beat) -> list[WorkerCommand]:
        """Record a live worker's heartbeat; the commands it must act on (cancel, kill a stale
        attempt, time out, preempt, drain). The caller answers a DEAD worker itself."""
        if self.beats is not None:
            self.beats.note(worker.id)
        else:
            self.cache.heartbeat(worker.id, 3 * self.heartbeat_interval)
        self.reconciler.heartbeat(worker.id, beat.running)
        await self.note_checkpoints(beat.checkpoints)
        self.metrics.gpu_utilization.record(worker.id, worker.name, beat.gpu_utilization)
        if beat.cached_uris is not None:
            await self.note_cached_uris(worker.id, beat.cached_uris)
        cmds = await self.worker_commands(worker.id, beat.running)
        return cmds + await self.drain_commands(worker, beat.draining, beat.running)

    async def worker_commands(
        self, worker_id: str, running: Sequence[tuple[str, int, str]]
    ) -> list[WorkerCommand]:
        """The worker's commands from the store, unless no event since its last look could have
        changed them (see :mod:`trainyard.server.commandgate`)."""
        gate, now = self.commands, self.monotonic()
        if gate.watch_due(now):
            events, newest = await off_loop(self.store.command_events, gate.cursor)
            gate.note(events, newest, now)
        if not gate.must_look(worker_id, running, now):
            return []
        cursor = gate.cursor
        cmds = await off_loop(self.store.worker_commands, worker_id, running)
        gate.looked(worker_id, running, cursor, bool(cmds), now)
        return cmds

    async def note_checkpoints(self, times: Iterable[tuple[str, int, float]]) -> None:
        """Persist the checkpoint times a heartbeat reports, when they moved (every few minutes per
        job, not every beat), so the leader's preemption choice sees them whichever replica it is."""
        moved = []
        for job_id, attempt, at in times:
            if at > 0 and self._checkpoints.get((job_id, attempt), 0.0) < at:
                moved.append((job_id, attempt, at))
        if moved:
            await off_loop(self.store.set_checkpoint_times, moved)
            if len(self._checkpoints) > 100_000:
                self._checkpoints.clear()
            self._checkpoints.update({(j, a): t for j, a, t in moved})

    async def note_cached_uris(self, worker_id: str, uris: Iterable[str]) -> None:
        """Persist a worker's data cache when it changed (agents send it with every heartbeat)."""
        held = tuple(sorted(set(uris)))
        if self._cached_uris.get(worker_id) != held:
            await off_loop(self.store.set_cached_uris, worker_id, held)
            self._cached_uris[worker_id] = held

    # ---- drains ----------------------------------------------------------------------------------
    async def drain(self, ref: str, deadline_s: float) -> Worker | None:
        """Drain a worker (id or name): nothing new goes there, and its running attempts are preempted
        (checkpointed, requeued without using a retry) once ``deadline_s`` has passed. None: unknown."""
        worker = await off_loop(self.store.drain_worker, ref, self.clock() + max(0.0, deadline_s))
        if worker is None:
            return None
        self.auth.forget_worker(worker.id)  # its next heartbeat must see DRAINING, not a cached ALIVE
        self.commands.forget(worker.id)
        self.dispatcher.drain(worker.id)
        self.kick_scheduler.set()
        return worker

    async def drain_commands(
        self, worker: Worker, draining: bool, running: Sequence[tuple[str, int, str]]
    ) -> list[WorkerCommand]:
        """A heartbeat's drain business: an agent that drains itself (a spot notice) is marked
        DRAINING; a drained one is told to take no work and, past its deadline, to preempt its
        attempts. Sent on every heartbeat until done, so a lost message or a restarted control plane
        does not matter (the agent ignores repeats)."""
        if draining and worker.status == "ALIVE":
            drained = await off_loop(self.store.drain_worker, worker.id, None)
            self.auth.forget_worker(worker.id)
            self.kick_scheduler.set()
            worker = drained or worker
        if worker.status != "DRAINING":
            return []
        cmds = [WorkerCommand("drain", "", 0, "")]
        if worker.drain_deadline is not None and worker.drain_deadline <= self.clock():
            cmds += [
                WorkerCommand("preempt", job_id, attempt, token, DRAIN_PREEMPT_REASON)
                for job_id, attempt, token in running
            ]
        return cmds

    # ---- views -----------------------------------------------------------------------------------
    async def workers_view(self) -> list[dict[str, Any]]:
        """Every worker with what its live attempts use and whether it counts as alive."""
        workers = await off_loop(self.store.list_workers)
        live = await off_loop(self.store.live_attempts)
        used: dict[str, tuple[float, int, int, int]] = {}
        for a in live:
            c, m, g, n = used.get(a.worker_id, (0.0, 0, 0, 0))
            used[a.worker_id] = (c + a.cpu, m + a.memory, g + len(a.gpu_indices), n + 1)
        out = []
        beats = await off_loop(self.cache.last_heartbeats, [w.id for w in workers])
        for w in workers:
            c, m, g, n = used.get(w.id, (0.0, 0, 0, 0))
            beat = beats.get(w.id)  # fresher than the table's copy
            w = dataclasses.replace(w, last_heartbeat=beat) if beat is not None else w
            out.append(worker_json(w, (c, m, g), n, self.replica.alive_with(beat, w.registered_at)))
        return out

    async def queues_view(self, user: User) -> dict[str, list[dict[str, Any]]]:
        """Pools (pending and running jobs) and teams (pending, running, resources in use); a
        non-admin sees only their own team's row."""
        pending = await off_loop(self.store.pending_by_pool_team)
        running = await off_loop(self.store.running_by_team)
        pools: dict[str, dict[str, Any]] = {}
        teams: dict[str, dict[str, Any]] = {}

        def team_row(team: str) -> dict[str, Any]:
            return teams.setdefault(
                team, {"team": team, "pending": 0, "running": 0, "cpu": 0.0, "memory": 0, "gpu": 0}
            )

        def pool_row(pool: str) -> dict[str, Any]:
            return pools.setdefault(pool, {"pool": pool, "pending": 0, "running": 0})

        for pool, team, n in pending:
            pool_row(pool or "default")["pending"] += n
            team_row(team)["pending"] += n
        for team, n, cpu, mem, gpu in running:
            team_row(team).update(running=n, cpu=cpu, memory=mem, gpu=gpu)
        for w in await off_loop(self.store.list_workers, False):
            pool_row(w.pool)
        pool_of = {w.id: w.pool for w in await off_loop(self.store.list_workers)}
        for a in await off_loop(self.store.live_attempts):
            if a.worker_id in pool_of:
                pool_row(pool_of[a.worker_id])["running"] += 1
        if not user.is_admin:
            teams = {k: v for k, v in teams.items() if k == user.team}
        return {
            "pools": sorted(pools.values(), key=lambda x: x["pool"]),
            "teams": sorted(teams.values(), key=lambda x: x["team"]),
        }

    def queue_gauges(self) -> dict[str, Any]:
        """The queue figures Prometheus scrapes (blocking): jobs by status, pending by pool, outbox lag."""
        pending: dict[str, int] = {}
        for pool, _team, n in self.store.pending_by_pool_team():
            pending[pool or "default"] = pending.get(pool or "default", 0) + n
        return {
            "by_status": self.store.count_by_status(),
            "pending_by_pool": pending,
            "outbox_lag": self.store.outbox_lag(),
        }
