"""The leader's scheduler loop: a snapshot of the store, the pure ``decide``, guarded leases.

Besides the leases, a cycle yields preemptions (handed to the dispatcher through
``take_preemptions``), the claims a preempting job holds on the workers it freed, the pending
reasons, the queue board (positions each cycle, estimated starts every few seconds), and the pending
demand that fits no worker (the autoscaling signal, :mod:`.demand`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trainyard.model.states import JobStatus, Priority
from trainyard.scheduler.core import Decisions, decide
from trainyard.scheduler.demand import cycle_demand
from trainyard.scheduler.eta import estimate_starts
from trainyard.scheduler.fairshare import TeamShare, accumulate
from trainyard.scheduler.snapshot import (
    PendingJob,
    Quota,
    ResourceVector,
    RunningJob,
    SchedulerConfig,
    Snapshot,
)
from trainyard.scheduler.snapshot import Team as SchedTeam
from trainyard.scheduler.snapshot import Worker as SchedWorker
from trainyard.server.metrics import Metrics
from trainyard.server.picture import (
    Picture,
    apply,
    checkpoints_due,
    full,
    needs_full,
    pending_view,
    running_view,
    with_checkpoints,
)
from trainyard.server.queueboard import (
    ESTIMATE_AFTER_S,
    ESTIMATE_EVERY_S,
    PUBLISH_EVERY_S,
    QueueBoard,
    waiting_positions,
)
from trainyard.server.services.board import QueueBoards
from trainyard.server.services.demand import PoolDemands
from trainyard.server.services.replica import Replica
from trainyard.server.services.usage import BudgetHolds, BudgetWatch
from trainyard.store import Lease, Placement, WorkerCommand

if TYPE_CHECKING:
    from trainyard.store.ports import SchedulingStore

log = logging.getLogger("trainyard.server")

ETA_MAX_STEPS = 16  # simulated job-end steps per estimate; later jobs get no estimate (null)
ETA_MAX_JOBS = 1000  # the first jobs of the global queue order are estimated
_PRIORITY_NAMES = {p.rank: p.value for p in Priority}


class SchedulerLoop:
    """One scheduler cycle at a time (blocking methods: the leader runs them in a thread)."""

    def __init__(
        self,
        store: SchedulingStore,
        replica: Replica,
        boards: QueueBoards,
        metrics: Metrics,
        *,
        config: SchedulerConfig,
        stop_grace_s: float,
        clock: Callable[[], float] = time.time,
        demand: PoolDemands | None = None,
        budgets: BudgetWatch | None = None,
    ) -> None:
        self.store = store
        self.replica = replica
        self.boards = boards
        self.metrics = metrics
        self.config = config
        self.stop_grace_s = stop_grace_s  # how long a told victim may take to stop before it is told again
        self.clock = clock
        self.demand = demand or PoolDemands(store, replica, clock)
        self.budgets = budgets  # None: no team is ever held for its dollar budget
        self.shares: dict[str, TeamShare] = {}
        self._reasons: dict[str, str] = {}  # pending reasons as last written
        self._history: dict[str, ResourceVector] = {}  # team -> decayed usage (leader's memory)
        self._history_at = 0.0
        self._preempting: dict[str, float] = {}  # job -> when its preempt command was issued
        self._preempt_queue: list[WorkerCommand] = []
        self._claims: dict[str, tuple[str, ...]] = {}  # job -> workers held for it (see schedule_once)
        self._board_published = 0.0
        self._last_cycle: tuple[Snapshot, Decisions] | None = None  # input of the next estimate
        self._picture: Picture | None = None  # pending jobs and live attempts between cycles
        self._picture_leader = -1.0  # the leadership term the picture was built in
        self._checkpoint_mark: str | None = None  # the checkpoint mark the picture's times are as of
        self.full_reads = 0  # how many times the picture was read whole (tests and the bench look)
        # What the rows of the picture became for ``decide``, kept while the row (the same object)
        # stays: a cycle at 10k running otherwise spends more building these than deciding.
        self._pending_jobs: dict[str, tuple[Any, PendingJob]] = {}
        self._running_jobs: dict[str, tuple[Any, bool, RunningJob]] = {}
        self._workers: dict[str, tuple[tuple[Any, ...], bool, SchedWorker]] = {}

    def picture(self, also: list[str] | tuple[str, ...] = ()) -> Picture:
        """The pending jobs and live attempts as of now: the last cycle's picture with the changes
        since (``also``: jobs changed without an event), or a full read when one is due (a new
        leadership term, the periodic safety net, a lasting gap in the change cursor)."""
        now = self.clock()
        picture = self._picture
        if self._picture_leader != self.replica.leader_since:
            picture, self._picture_leader = None, self.replica.leader_since
        read = None
        if picture is not None and not needs_full(picture, None, now):
            read = self.store.scheduling_changes(picture.cursor, also)
            if not read.overflow:
                picture = apply(picture, read, now)
        if picture is None or needs_full(picture, read, now):
            picture = full(self.store.scheduling_full_read(), now)
            self.full_reads += 1
        # Checkpoint times come without an event: reread when a replica marked new ones written.
        mark = self.store.checkpoint_mark()
        if mark != self._checkpoint_mark or checkpoints_due(picture, now):
            picture = with_checkpoints(picture, self.store.checkpoint_times(), now)
            self._checkpoint_mark = mark
        self._picture = picture
        return picture

    def schedule_once(self) -> list[Lease]:
        """One scheduler cycle: snapshot → pure decisions → guarded leases, and preempt commands
        queued for ``take_preemptions``."""
        t0 = time.perf_counter()
        # Jobs waiting for others first: those whose dependencies are met join this cycle's queue,
        # those whose dependencies can never be met end FAILED.
        released = self.store.resolve_dependencies().touched
        now = self.clock()
        # Before the early return: the budget alerts fire while nothing is pending too.
        holds = self.budgets.holds(now) if self.budgets is not None else BudgetHolds()
        picture = self.picture(released)
        pending = pending_view(picture, now)
        if not pending:
            self._reasons = {}
            self._post_board(QueueBoard(as_of=now), now, force=bool(self.boards.local.positions))
            self._last_cycle = None
            self.demand.post([], now)
            return []
        running = running_view(picture)
        snapshot = Snapshot(
            now=now,
            workers=tuple(self._scheduling_workers()),
            pending=self._pending_jobs_of(pending),
            running=self._running_jobs_of(running, now),
            teams=tuple(self._scheduling_teams(running, now)),
            config=self.config,
            over_budget=holds.over_budget,
            budget_exempt=holds.exempt,
        )
        decisions = decide(snapshot)
        # A job that preempted others holds the workers it freed until it is placed; otherwise the
        # requeued victim would take them back and be evicted again, forever.
        placed_ids = {p.job_id for p in decisions.placements}
        waiting = {r.id for r in pending} - placed_ids
        self._claims = {j: w for j, w in {**self._claims, **decisions.claims}.items() if j in waiting}
        leases = self.store.lease(
            Placement(p.job_id, p.worker_id, p.gpu_indices, p.attempt, p.rank, p.world_size)
            for p in decisions.placements
        )
        self._queue_preemptions(decisions, running, now)
        self.shares = decisions.shares
        self._post_cycle_board(decisions, pending, waiting, now)
        self.demand.post(cycle_demand(snapshot, decisions), now)
        oldest = min((r.queued_at for r in pending if r.id in waiting), default=now)
        self._last_cycle = (snapshot, decisions) if now - oldest >= ESTIMATE_AFTER_S else None
        # Write only reasons that changed since the last cycle; most cycles change few.
        changed = {j: r for j, r in decisions.reasons.items() if self._reasons.get(j) != r}
        self.store.set_pending_reasons(changed)
        self._reasons = dict(decisions.reasons)
        self._observe_waits(decisions, pending, leases, now)
        self.metrics.cycle.observe(time.perf_counter() - t0)
        return leases

    def _queue_preemptions(self, decisions: Decisions, running: list[Any], now: float) -> None:
        by_id = {r.id: r for r in running}
        for victim in decisions.preemptions:
            row = by_id.get(victim.job_id)
            if row is None or victim.job_id in self._preempting:
                continue
            self._preempting[victim.job_id] = now
            log.info(
                "preempting %s on %s (%s, for %s)",
                victim.job_id,
                row.worker_id,
                victim.reason,
                victim.for_job,
            )
            reason = f"preempted ({victim.reason}) for job {victim.for_job}"
            self._preempt_queue.append(
                WorkerCommand("preempt", row.id, row.attempt, row.lease_token or "", reason, row.worker_id)
            )
            self.metrics.preemptions.labels(victim.reason).inc()

    def _post_cycle_board(
        self, decisions: Decisions, pending: list[Any], waiting: set[str], now: float
    ) -> None:
        board = self.boards.local
        self._post_board(
            QueueBoard(
                positions=waiting_positions(
                    decisions.queue_position, {r.id: r.team for r in pending}, waiting
                ),
                starts={j: t for j, t in board.starts.items() if j in waiting},
                as_of=now,
                estimated_at=board.estimated_at,
            ),
            now,
        )

    def _observe_waits(
        self, decisions: Decisions, pending: list[Any], leases: list[Lease], now: float
    ) -> None:
        placed = {p.id: p for p in pending}
        crossed = {p.job_id for p in decisions.placements if p.cross_region and p.rank == 0}
        for lease in leases:
            if lease.rank:
                continue  # a gang waited once
            if lease.job_id in crossed:
                self.metrics.cross_region.inc()
            p = placed[lease.job_id]
            self.metrics.wait.labels(p.pool or "default", _PRIORITY_NAMES.get(p.priority, "normal")).observe(
                max(0.0, now - p.queued_at)
            )

    def take_preemptions(self) -> list[WorkerCommand]:
        """The preempt commands of the last cycles, for the dispatcher to send."""
        taken, self._preempt_queue = self._preempt_queue, []
        # A victim that has not stopped within the grace (plus slack) may be chosen and told again.
        horizon = self.clock() - self.stop_grace_s
        self._preempting = {j: t for j, t in self._preempting.items() if t > horizon}
        return taken

    # ---- the queue board -------------------------------------------------------------------------
    def _post_board(self, board: QueueBoard, now: float, force: bool = False) -> None:
        self.boards.local = board
        if force or now - self._board_published >= PUBLISH_EVERY_S:
            self.boards.publish()
            self._board_published = now

    def estimate_due(self) -> bool:
        """An estimate is worth its cost once jobs have waited a while (a queue that drains within
        seconds raises no "when will it start?") and the last one is ``ESTIMATE_EVERY_S`` old."""
        return (
            self._last_cycle is not None and self.clock() - self.boards.local.estimated_at >= ESTIMATE_EVERY_S
        )

    def estimate_once(self) -> None:
        """Estimated starts for the last cycle's waiting jobs (blocking; run in a thread apart from
        the scheduler's, which it does not delay: ``decide`` is pure and the snapshot immutable)."""
        last = self._last_cycle
        if last is None:
            return
        snapshot, decisions = last
        estimates = estimate_starts(snapshot, first=decisions, max_steps=ETA_MAX_STEPS, max_jobs=ETA_MAX_JOBS)
        # Merged into whatever board the scheduler has posted since: only jobs still waiting.
        board = self.boards.local
        starts = {j: estimates.start_at.get(j) for j in board.positions}
        self.boards.local = QueueBoard(board.positions, starts, board.as_of, estimated_at=snapshot.now)
        self.boards.publish()
        self._board_published = self.clock()

    # ---- the snapshot ----------------------------------------------------------------------------
    def _scheduling_workers(self) -> list[SchedWorker]:
        kept = self._workers
        self._workers = {}
        out = []
        rows = self.store.scheduling_workers()
        beats = self.replica.last_beats([row[0] for row in rows if row[7] == "ALIVE"])
        for row in rows:
            wid, cpu, memory, gpu, gpu_type, pool, region, status, registered_at, labels, uris = row
            alive = status == "ALIVE" and self.replica.alive_with(beats.get(wid), registered_at)
            hit = kept.get(wid)
            if hit is not None and hit[0] == row and hit[1] == alive:
                worker = hit[2]
            else:
                label_map = json.loads(labels) if labels else {}
                worker = SchedWorker(
                    id=wid,
                    cpu=cpu,
                    memory=memory,
                    gpu=gpu,
                    gpu_type=gpu_type,
                    pool=pool,
                    region=region,
                    spot=label_map.get("spot") == "true",
                    schedulable=alive,
                    labels=label_map,
                    cached_uris=frozenset(json.loads(uris) if uris else ()),
                )
            self._workers[wid] = (row, alive, worker)
            out.append(worker)
        return out

    def _pending_jobs_of(self, rows: list[Any]) -> tuple[PendingJob, ...]:
        kept, self._pending_jobs = self._pending_jobs, {}
        out = []
        for r in rows:
            claimed = self._claims.get(r.id, ())
            hit = kept.get(r.id)
            if hit is not None and hit[0] is r and hit[1].claimed_workers == claimed:
                job = hit[1]
            else:
                job = _pending_job(r, claimed)
            self._pending_jobs[r.id] = (r, job)
            out.append(job)
        return tuple(out)

    def _running_jobs_of(self, rows: list[Any], now: float) -> tuple[RunningJob, ...]:
        kept, self._running_jobs = self._running_jobs, {}
        out = []
        for r in rows:
            preempting = r.id in self._preempting
            hit = kept.get(r.id)
            if hit is not None and hit[0] is r and hit[1] == preempting:
                job = hit[2]
            else:
                job = self._running_job(r, now)
            self._running_jobs[r.id] = (r, preempting, job)
            out.append(job)
        return tuple(out)

    def _running_job(self, r: Any, now: float) -> RunningJob:
        started = r.started_at or r.scheduled_at or now
        preempting = self._preempting.get(r.id)
        return RunningJob(
            # A gang's ranks are one job to the scheduler (preempted, and counted, together).
            id=r.gang_id or r.id,
            replica=r.replica_rank,
            team=r.team,
            worker_id=r.worker_id,
            priority=r.priority,
            cpu=r.cpu,
            memory=r.memory,
            gpu=r.gpu,
            gpu_indices=tuple(r.gpu_indices),
            preemptible=r.preemptible,
            started_at=started,
            last_checkpoint_at=r.last_checkpoint_at,
            max_runtime_s=r.max_runtime,
            terminating=r.status == JobStatus.CANCELLING.value or preempting is not None,
            array_id=r.array_id,
        )

    def _scheduling_teams(self, running: list[Any], now: float) -> list[SchedTeam]:
        """Teams with their quotas and a usage history decayed with the configured half-life (kept by
        the leader in memory: a new leader starts the history afresh). Teams are read every cycle, not
        cached: a weight or quota changed through any replica applies from the next cycle (one small
        SELECT; teams are few)."""
        teams = {t.name: t for t in self.store.list_teams()}
        sums: dict[str, list[float]] = {}
        for r in running:
            acc = sums.get(r.team)
            if acc is None:
                acc = sums[r.team] = [0.0, 0.0, 0.0]
            acc[0] += r.cpu
            acc[1] += r.memory
            acc[2] += r.gpu
        current = {team: ResourceVector(c, m, g) for team, (c, m, g) in sums.items()}
        elapsed = now - self._history_at if self._history_at else 0.0
        self._history_at = now
        half_life = self.config.half_life_s
        for name in set(self._history) | set(current):
            self._history[name] = accumulate(
                self._history.get(name, ResourceVector()),
                current.get(name, ResourceVector()),
                elapsed,
                half_life,
            )
        out = []
        for name in set(teams) | set(current):
            t = teams.get(name)
            quota = None
            if t is not None and (
                t.cpu_quota is not None
                or t.memory_quota is not None
                or t.gpu_quota is not None
                or t.gpu_type_quotas
            ):
                quota = Quota(
                    cpu=t.cpu_quota,
                    memory=t.memory_quota,
                    gpu=t.gpu_quota,
                    gpu_by_type=dict(t.gpu_type_quotas),
                )
            out.append(
                SchedTeam(
                    name=name,
                    weight=t.weight if t is not None else 1.0,
                    quota=quota,
                    usage_history=self._history.get(name, ResourceVector()),
                )
            )
        return out


def _pending_job(r: Any, claimed: tuple[str, ...]) -> PendingJob:
    return PendingJob(
        id=r.id,
        team=r.team,
        user=r.user_name,
        priority=r.priority,
        queued_at=r.queued_at,
        cpu=r.cpu,
        memory=r.memory,
        gpu=r.gpu,
        gpu_type=r.gpu_type,
        pool=r.pool,
        region=r.region,
        require_region=r.require_region,
        data_uris=tuple(r.data_uris or ()),
        preemptible=r.preemptible,
        replicas=r.replicas,
        max_runtime_s=r.max_runtime,
        attempt=r.attempt,
        claimed_workers=claimed,
        array_id=r.array_id,
        array_limit=r.array_limit,
    )
