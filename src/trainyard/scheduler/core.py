"""Scheduler v2: one pure decision over a snapshot (fair share, quotas, preemption, gangs, backfill).

``decide(snapshot)`` reads nothing but its argument, so the leader loop, the ETA estimator, the
simulator and the tests all run the same code, and the same snapshot always gives the same
decisions (every sort has an explicit tie-breaker; dicts are filled in sorted order).

One cycle, in the spirit of armada's scheduling round:

1. Each team's pending jobs form a queue ordered by effective priority (declared rank raised one
   step per ``aging_s_per_priority_step`` waited, up to ``aging_cap``), then age, then id.
2. Teams take turns by weighted DRF: the team with the lowest (share + history) / fair share goes
   next, so placing a job raises its team's cost and hands the turn on (progressive filling).
3. A job first passes its team's quota, then is placed on free capacity by best fit with soft costs
   (region, spot, cached data). A gang places all replicas or none.
4. A job that does not fit may preempt: high/urgent jobs evict preemptible lower-priority jobs, and an
   under-share team evicts preemptible jobs of over-share teams. Victims are found by simulating
   their removal, so nobody is evicted unless the job then fits. The job is not placed in the same
   cycle: the victims still hold the GPUs through their grace period, so the freed capacity is
   *claimed* for the job instead, and the job is placed once the victims are gone.
5. The first blocked jobs get an EASY reservation: the workers where they start earliest (running
   jobs assumed to run to ``max_runtime``) are held from that time, and a later job may use them
   only if it ends before then or fits in what the reservation leaves over.

Work is kept near-linear in the number of pending jobs: workers are bucketed per constraint group
by (free GPUs, free-cpu octave) so best fit is a few dict lookups, a job shape that failed is not
searched again in the cycle (capacity only shrinks within a cycle), and the O(workers) victim and
reservation searches run for a bounded number of jobs per cycle.

The constant factor matters too (a cycle with 10,000 pending jobs on 2,000 workers should take a
fraction of a second; ``bench/scheduler.py`` measures it), so the hot paths are written for it:

* Everything jobs of one demand shape share is worked out once per cycle (``_Shape``: the groups
  it may use, whether it can ever fit, its "waiting for capacity" text), and a shape that fits on
  no worker even ignoring reservations is marked ``dead`` so later jobs skip the search.
* Per-worker and per-team state is plain floats and lists, updated in place; the frozen
  ``ResourceVector`` appears only in the returned shares.
* A team's fair-share cost is recomputed only when its usage changed; the victim search skips
  workers whose cheapest victim cannot beat the best found, and the reservation search stops
  following a worker once it cannot start before the ones already chosen.
* The cycle's objects form no reference cycles, so ``decide`` pauses the cyclic garbage collector
  while it runs (a full collection walks the whole snapshot) and refcounting frees everything.

None of this changes a decision: ``tests/unit/scheduler/test_decide_equivalence.py`` pins the
decisions on a spread of snapshots.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from trainyard.model.quantity import format_memory, human_memory
from trainyard.scheduler.fairshare import TeamShare, dominant_share, team_shares
from trainyard.scheduler.snapshot import (
    PendingJob,
    ResourceVector,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Team,
    Worker,
)

EPS = 1e-9
_LVL_OFFSET = 32  # cpu octaves from 2**-32 up: far below any real fraction of a core
_LVL_SPAN = 128

_VictimCost = tuple[int, float, float, int, str]  # worst priority, lost work, lost runtime, size, worker
_Ends = tuple[list[tuple[float, float, float, int]], float, float, float]

PreemptReason = Literal["priority", "fair-share reclaim"]
ReasonCode = Literal["quota", "never-fits", "capacity", "reserved", "preempting", "draining", "reservation"]


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: str
    worker_id: str
    gpu_indices: tuple[int, ...]
    rank: int = 0
    """Replica rank (``TRAINYARD_RANK``); rank 0's worker is the gang's ``MASTER_ADDR``."""
    world_size: int = 1
    attempt: int = 0
    cross_region: bool = False
    """Placed outside the job's ``data.region`` (the cross-region metric counts these)."""


@dataclass(frozen=True, slots=True)
class Preemption:
    job_id: str
    worker_ids: tuple[str, ...]
    reason: PreemptReason
    for_job: str
    """The pending job the freed capacity is claimed for."""


@dataclass(frozen=True, slots=True)
class Reservation:
    job_id: str
    worker_ids: tuple[str, ...]
    start_at: float
    """Latest time the reserved job is expected to start, from running jobs' ``max_runtime``."""


@dataclass
class Decisions:
    placements: list[Placement] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    """Why each unplaced pending job waits, in words for ``yard get`` and the API."""
    reason_codes: dict[str, ReasonCode] = field(default_factory=dict)
    """The same, as a stable code for metrics and filters."""
    queue_position: dict[str, int] = field(default_factory=dict)
    """1-based position of each pending job in its team's queue."""
    order: list[str] = field(default_factory=list)
    """Pending job ids in the order this cycle considered them (the global queue)."""
    reservations: list[Reservation] = field(default_factory=list)
    claims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Workers whose capacity is held for a job while the jobs preempted for it stop."""
    shares: dict[str, TeamShare] = field(default_factory=dict)
    cross_region: int = 0


def effective_priority(job: PendingJob, now: float, config: SchedulerConfig) -> int:
    """Declared rank raised by aging; aging never lifts a job above ``aging_cap``."""
    if config.aging_s_per_priority_step <= 0:
        return job.priority
    steps = int(max(now - job.queued_at, 0.0) // config.aging_s_per_priority_step)
    return max(job.priority, min(job.priority + steps, config.aging_cap))


def decide(snapshot: Snapshot) -> Decisions:
    """Everything the scheduler would do now: placements, preemptions, reservations and reasons."""
    # A cycle allocates many short-lived containers and makes no reference cycles, so the cyclic
    # collector can only cost time here, and a full collection walks the whole snapshot: at 50k
    # pending jobs, two of them took about 150 ms of one cycle. Refcounting frees it all anyway.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _Cycle(snapshot).run()
    finally:
        if was_enabled:
            gc.enable()


def _level(cpu: float) -> int:
    # frexp gives cpu = m * 2**e with m in [0.5, 1): e - 1 is the octave, exact for powers of two.
    return math.frexp(cpu)[1] - 1


_by_id = operator.attrgetter("id")
_by_queued_at = operator.attrgetter("queued_at")
_by_replica = operator.attrgetter("replica")
_start_and_id = operator.itemgetter(0, 1)
_by_worker_id = operator.attrgetter("worker_id")


def groups_key(job: PendingJob) -> tuple[object, ...]:
    """Everything about a job that decides where it may run and whether it fits."""
    return (
        job.pool,
        job.gpu_type if job.gpu else None,
        job.gpu > 0,
        job.preemptible,
        (job.region,) if job.require_region else None,
        job.cpu,
        job.memory,
        job.gpu,
        job.replicas,
    )


def _describe(job: PendingJob) -> str:
    parts = [f"{job.cpu:g} cpu", f"{format_memory(job.memory)} memory"]
    if job.gpu:
        parts.append(f"{job.gpu}×{job.gpu_type or 'gpu'}")
    where = f" in pool {job.pool}" if job.pool else ""
    return ", ".join(parts) + where


def _amount(label: str, v: float) -> str:
    return human_memory(v) if label == "memory" else f"{v:g}"


@dataclass(slots=True)
class _Res:
    job_id: str
    start_at: float
    spare: list[float]  # cpu, memory, gpu left over at start_at once the reserved job is in


class _W:
    """A worker's state through the cycle. It names no group (``_Cycle.group_of`` does): the cycle's
    objects form no reference cycles, so they are freed as soon as ``decide`` returns.

    A plain slotted class rather than a dataclass: one is built per worker, every cycle."""

    __slots__ = (
        "dooms",
        "drain_cpu",
        "drain_gpus",
        "drain_mem",
        "extra",
        "free_cpu",
        "free_gpus",
        "free_mem",
        "holders",
        "indexes",
        "key",
        "res",
        "victim_here",
        "victim_total",
        "victims",
        "w",
    )

    def __init__(self, w: Worker) -> None:
        self.w = w
        self.free_cpu = float(w.cpu)
        self.free_mem = float(w.memory)
        self.free_gpus = list(range(w.gpu))
        self.drain_cpu = 0.0
        self.drain_mem = 0.0
        self.drain_gpus: list[int] = []
        self.key: int | None = None
        self.holders: list[RunningJob] = []
        self.victims: list[RunningJob] = []  # preemptible, cheapest loss first
        self.victim_total = [0.0, 0.0, 0.0]
        self.victim_here: dict[str, list[float]] = {}  # job id -> what it frees here
        self.extra: list[tuple[float, float, float, int]] = []  # placed this cycle: (end, cpu, mem, gpu)
        self.res: _Res | None = None
        self.indexes: list[_Index] = []  # the group's, then one per cached URI
        self.dooms = 0  # times a holder here was doomed, rolled-back ones included: keys _ends()


class _Index:
    """Workers bucketed by ``free GPUs * _LVL_SPAN + free-cpu octave``, with the non-empty keys kept
    sorted so a best-fit search visits only buckets that exist, smallest first. Within a bucket,
    workers keep the order they entered it in (``_Cycle._rebucket`` maintains both)."""

    __slots__ = ("buckets", "keys")

    def __init__(self) -> None:
        self.buckets: dict[int, dict[str, None]] = {}  # worker ids: an index holds no _W
        self.keys: list[int] = []


@dataclass(slots=True, eq=False)
class _Group:
    """Workers that share every hard constraint a job can name: pool, GPU type, region, spot."""

    pool: str
    gpu_type: str | None
    region: str | None
    spot: bool
    members: list[_W] = field(default_factory=list)
    buckets: _Index = field(default_factory=lambda: _Index())
    cached: dict[str, _Index] = field(default_factory=dict)
    """The same index per dataset URI, over the workers that cache it."""
    shapes: dict[tuple[float, int, int], int] = field(default_factory=dict)
    """Distinct worker capacities (cpu, memory, gpu) and how many workers have each."""
    max_gpu: int = 0


@dataclass(slots=True, eq=False)
class _T:
    name: str
    team: Team
    usage: list[float]  # cpu, memory, gpu: what quotas count, preempted-but-still-running included
    by_type: dict[str, int]
    history_share: float
    fair: float
    leaving: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """Held by jobs preempted this cycle: still there for quotas, already gone for fair share."""
    changes: int = 0
    """Bumped whenever ``usage`` or ``leaving`` changes (undos included), so the fair pass knows
    when the team's cost needs computing again."""

    def share_usage(self) -> list[float]:
        return [
            self.usage[0] - self.leaving[0],
            self.usage[1] - self.leaving[1],
            self.usage[2] - self.leaving[2],
        ]


@dataclass(slots=True, eq=False)
class _Shape:
    """What every job of one demand shape (constraints, per-replica demand, gang size) shares within
    a cycle. Identity is the key: memos hold the object itself."""

    groups: list[_Group]
    never: str | None
    dead: bool = False
    """No worker in ``groups`` fits even one replica, reservations aside. Free capacity only shrinks
    within a cycle, so this stays true once found."""
    why: dict[int, str] = field(default_factory=dict)
    """The capacity reason, by the largest free GPU count it names (-1: it names none)."""


class _Cycle:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.cfg = snap.config
        self.now = snap.now
        self.out = Decisions()
        self.log: list[Callable[[], None]] | None = None
        self.failed: set[tuple[object, ...]] = set()
        self.ck_groups: dict[tuple[object, ...], list[_Group]] = {}
        self.ranked_memo: dict[tuple[object, ...], tuple[list[_Group], list[tuple[float, _Group]]]] = {}
        self.shapes: dict[tuple[object, ...], _Shape] = {}
        self.doomed: set[str] = set()
        self.preempt_attempts = 0
        self.no_victims: set[tuple[object, ...]] = set()
        self.type_block: str | None = None
        self.ends_memo: dict[str, tuple[tuple[int, int], _Ends]] = {}
        self.type_groups: list[_Group] = []  # for an untyped job: the groups its quotas ever allow
        self.draining: dict[str, None] = {}

        all_workers = sorted(snap.workers, key=lambda w: w.id)
        self.worker_type = {w.id: w.gpu_type for w in all_workers}
        ws: dict[str, _W] = {}
        group_of: dict[str, _Group] = {}
        self.ws, self.group_of = ws, group_of
        groups: dict[tuple[str, str | None, str | None, bool], _Group] = {}
        cap = [0.0, 0.0, 0.0]
        for w in all_workers:
            if not w.schedulable or w.id in ws:
                continue
            gk = (w.pool, w.gpu_type, w.region, w.spot)
            grp = groups.get(gk)
            if grp is None:
                grp = groups[gk] = _Group(w.pool, w.gpu_type, w.region, w.spot)
            st = ws[w.id] = _W(w)
            group_of[w.id] = grp
            indexes = st.indexes
            indexes.append(grp.buckets)
            for uri in w.cached_uris:
                index = grp.cached.get(uri)
                if index is None:
                    index = grp.cached[uri] = _Index()
                indexes.append(index)
            grp.members.append(st)
            shape = (float(w.cpu), w.memory, w.gpu)
            grp.shapes[shape] = grp.shapes.get(shape, 0) + 1
            grp.max_gpu = max(grp.max_gpu, w.gpu)
            cap[0] += w.cpu
            cap[1] += w.memory
            cap[2] += w.gpu
        self.groups = [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1] or "", k[2] or "", k[3]))]
        self.capacity = ResourceVector(*cap)
        # dominant_share() per heap push is measurable at 10k jobs; a resource the fleet lacks
        # counts for nothing, as in dominant_share().
        self.inv_capacity = tuple(1.0 / c if c > 0 else 0.0 for c in cap)

        self.shares = team_shares(snap)
        self.teams: dict[str, _T] = {}
        configured = {t.name: t for t in snap.teams}
        for name, sh in self.shares.items():
            team = configured.get(name, Team(name))
            self.teams[name] = _T(name, team, [0.0, 0.0, 0.0], {}, sh.history_share, sh.fair_share)

        self.gangs: dict[str, list[RunningJob]] = {}
        gangs, teams, worker_type = self.gangs, self.teams, self.worker_type
        used_gpus: dict[str, set[int]] = {}
        running = sorted(snap.running, key=_by_worker_id)  # by (id, replica, worker), in stable passes
        running.sort(key=_by_replica)
        running.sort(key=_by_id)
        for r in running:
            gang = gangs.get(r.id)
            if gang is None:
                gangs[r.id] = [r]
            else:
                gang.append(r)
            cpu, mem, gpu = r.cpu, r.memory, r.gpu
            t = teams[r.team]
            usage = t.usage
            usage[0] += cpu
            usage[1] += mem
            usage[2] += gpu
            gtype = worker_type.get(r.worker_id)
            if gpu and gtype:
                t.by_type[gtype] = t.by_type.get(gtype, 0) + gpu
            host = ws.get(r.worker_id)
            if host is None:
                continue  # a lost or draining worker: its use still counts against the team
            host.holders.append(r)
            host.free_cpu -= cpu
            host.free_mem -= mem
            if r.gpu_indices or not gpu:
                taken: Iterable[int] = r.gpu_indices
            else:
                taken = [g for g in host.free_gpus if g not in used_gpus.get(r.worker_id, ())][:gpu]
            if taken:
                used = used_gpus.get(r.worker_id)
                if used is None:
                    used = used_gpus[r.worker_id] = set()
                used.update(taken)
            if r.terminating:
                host.drain_cpu += cpu
                host.drain_mem += mem
                host.drain_gpus.extend(sorted(taken))
                self.draining[r.worker_id] = None
            elif r.preemptible:
                # Replicas of one gang on one worker go together: one victim, their sum freed.
                here = host.victim_here.get(r.id)
                if here is None:
                    host.victims.append(r)
                    host.victim_here[r.id] = [cpu, mem, gpu]
                else:
                    here[0] += cpu
                    here[1] += mem
                    here[2] += gpu
                total = host.victim_total
                total[0] += cpu
                total[1] += mem
                total[2] += gpu
        for wid, used in used_gpus.items():
            host = ws[wid]
            host.free_gpus = [g for g in host.free_gpus if g not in used]
        for st in ws.values():
            if len(st.victims) > 1:
                st.victims.sort(key=self._loss_key)
            self._rebucket(st)

    # --- bookkeeping -------------------------------------------------------------------------

    def _loss_key(self, r: RunningJob) -> tuple[int, float, float, str]:
        """Cheapest victim first: lowest priority, least work since a checkpoint, shortest run."""
        since = self.now - (r.last_checkpoint_at if r.last_checkpoint_at is not None else r.started_at)
        return (r.priority, since, self.now - r.started_at, r.id)

    def _rebucket(self, st: _W) -> None:
        """Move the worker to the bucket its free capacity now belongs in, in every index it is in."""
        cpu = st.free_cpu
        if cpu > EPS and st.free_mem > 0:
            # Clamped only from above: cpu > EPS is far above 2**-_LVL_OFFSET.
            lvl = min(_level(cpu), _LVL_SPAN - _LVL_OFFSET - 1)
            key: int | None = len(st.free_gpus) * _LVL_SPAN + lvl + _LVL_OFFSET
        else:
            key = None  # holds no cpu or memory: nothing can land here
        old = st.key
        if key == old:
            return
        wid = st.w.id
        for index in st.indexes:
            buckets = index.buckets
            if old is not None:
                was = buckets[old]
                del was[wid]
                if not was:
                    del buckets[old]
                    keys = index.keys
                    del keys[bisect.bisect_left(keys, old)]
            if key is not None:
                now = buckets.get(key)
                if now is None:
                    buckets[key] = {wid: None}
                    bisect.insort(index.keys, key)
                else:
                    now[wid] = None
        st.key = key

    def _record(self, undo: Callable[[], None]) -> None:
        if self.log is not None:
            self.log.append(undo)

    def _begin(self) -> None:
        self.log = []

    def _rollback(self) -> None:
        log, self.log = self.log or [], None
        for undo in reversed(log):
            undo()

    def _commit(self) -> None:
        self.log = None

    def _snapshot_worker(self, st: _W) -> Callable[[], None]:
        saved = (
            st.free_cpu,
            st.free_mem,
            st.free_gpus,
            st.drain_cpu,
            st.drain_mem,
            st.drain_gpus,
            len(st.extra),
            list(st.res.spare) if st.res else None,
        )

        def undo() -> None:
            st.free_cpu, st.free_mem, st.free_gpus, st.drain_cpu, st.drain_mem, st.drain_gpus = saved[:6]
            del st.extra[saved[6] :]
            if st.res is not None and saved[7] is not None:
                st.res.spare = saved[7]
            self._rebucket(st)

        return undo

    def _add_usage(self, t: _T, cpu: float, mem: float, gpu: int, gtype: str | None) -> None:
        t.changes += 1
        t.usage[0] += cpu
        t.usage[1] += mem
        t.usage[2] += gpu
        if gpu and gtype:
            t.by_type[gtype] = t.by_type.get(gtype, 0) + gpu
        if self.log is None:
            return

        def undo() -> None:
            t.changes += 1
            t.usage[0] -= cpu
            t.usage[1] -= mem
            t.usage[2] -= gpu
            if gpu and gtype:
                t.by_type[gtype] -= gpu

        self.log.append(undo)

    def _share(self, usage: Sequence[float]) -> float:
        inv = self.inv_capacity
        return max(usage[0] * inv[0], usage[1] * inv[1], usage[2] * inv[2])

    def _cost(self, t: _T) -> float:
        # _share(t.share_usage()) without the list: this runs once per visited job.
        u, gone, inv = t.usage, t.leaving, self.inv_capacity
        share = max((u[0] - gone[0]) * inv[0], (u[1] - gone[1]) * inv[1], (u[2] - gone[2]) * inv[2])
        return (share + self.cfg.history_weight * t.history_share) / max(t.fair, EPS)

    # --- the cycle ---------------------------------------------------------------------------

    def run(self) -> Decisions:
        queues: dict[str, list[PendingJob]] = {}
        for job in self.snap.pending:
            queues.setdefault(job.team, []).append(job)
        # Jobs holding a claim from an earlier preemption go first: the capacity was freed for
        # them, and letting whoever comes first in fair-share order (often the requeued victim)
        # take it would make the claimant evict again, forever.
        first: dict[str, list[PendingJob]] = {}
        rest: dict[str, list[PendingJob]] = {}
        now, step, cap = self.now, self.cfg.aging_s_per_priority_step, self.cfg.aging_cap

        def rank(j: PendingJob) -> int:
            # -effective_priority(), inlined: this runs for every pending job.
            if step <= 0:
                return -j.priority
            return -max(j.priority, min(j.priority + int(max(now - j.queued_at, 0.0) // step), cap))

        position = self.out.queue_position
        for name in sorted(queues):
            q = queues[name]
            # By (-effective priority, queued_at, id): three stable sorts, least significant key
            # first, compare scalars, which is quicker than comparing tuples.
            q.sort(key=_by_id)
            q.sort(key=_by_queued_at)
            q.sort(key=rank)
            for i, job in enumerate(q, 1):
                position[job.id] = i
            claimed = [j for j in q if j.claimed_workers]
            if claimed:
                first[name] = claimed
                q = [j for j in q if not j.claimed_workers]
            if q:
                rest[name] = q
        self._fair_pass(first)
        self._fair_pass(rest)
        self.out.shares = self._final_shares()
        return self.out

    def _fair_pass(self, queues: dict[str, list[PendingJob]]) -> None:
        """Visit every queued job, the next from whichever team has the lowest weighted cost."""
        heap: list[tuple[float, str]] = []
        costed: dict[str, int] = {}  # team -> its ``changes`` when its heap entry was costed
        for name, q in queues.items():
            q.reverse()  # pop() from the end is O(1)
            t = self.teams[name]
            heap.append((self._cost(t), name))
            costed[name] = t.changes
        heapq.heapify(heap)
        visit, cost, teams = self._visit, self._cost, self.teams
        while heap:
            name = heap[0][1]
            q = queues[name]
            visit(q.pop())
            if not q:
                heapq.heappop(heap)
                continue
            t = teams[name]
            if t.changes != costed[name]:
                heapq.heapreplace(heap, (cost(t), name))  # names are unique: no ties
                costed[name] = t.changes
            # else its cost is the one in its entry, which is still the smallest: it goes again

    def _final_shares(self) -> dict[str, TeamShare]:
        out: dict[str, TeamShare] = {}
        for name, sh in self.shares.items():
            t = self.teams[name]
            usage = ResourceVector(*t.share_usage())
            out[name] = TeamShare(
                team=name,
                weight=sh.weight,
                usage=usage,
                share=dominant_share(usage, self.capacity),
                history_share=sh.history_share,
                fair_share=sh.fair_share,
                pending=sh.pending,
                running=sh.running,
            )
        return out

    def _wait(self, job: PendingJob, code: ReasonCode, text: str) -> None:
        self.out.reasons[job.id] = text
        self.out.reason_codes[job.id] = code

    def _visit(self, job: PendingJob) -> None:
        self.out.order.append(job.id)
        t = self.teams[job.team]
        gpu = job.gpu
        key = (
            job.pool,
            job.gpu_type if gpu else None,
            job.preemptible,
            job.require_region,
            job.region if job.require_region else None,
            job.cpu,
            job.memory,
            gpu,
            job.replicas,
        )
        sh = self.shapes.get(key)
        if sh is None:
            sh = self.shapes[key] = self._shape(job)
        # "Never" before "quota": waiting for the team's own jobs to finish would not help.
        if sh.never is not None:
            self._wait(job, "never-fits", sh.never)
            return
        q = t.team.quota
        if q is not None:
            quota = self._quota_reason(t, job)
            if quota is not None:
                self._wait(job, quota[0], quota[1])
                return
        groups = sh.groups
        typed_quota = gpu > 0 and job.gpu_type is None and q is not None and bool(q.gpu_by_type)
        # A per-type quota makes success depend on the team, not just the shape.
        mk = (sh, job.max_runtime_s, job.team if typed_quota else None)
        if typed_quota:
            groups, ever = self._types_with_room(t, job, groups)
            if ever and job.replicas > 1 and self._slots(self.type_groups, job) < job.replicas:
                ever, groups = False, []
                self.type_block = (
                    f"no registered worker can ever fit: gang of {job.replicas} replicas of {_describe(job)} "
                    f"within team {t.name}'s GPU type quotas"
                )
            if not groups:
                self._wait(job, "quota" if ever else "never-fits", self.type_block or "")
                return
        # ``dead`` speaks for the shape's own groups only, not for a per-type quota's subset.
        dead = sh.dead and groups is sh.groups
        if mk not in self.failed:
            self.type_block = None
            if not dead:
                if self._place_now(job, groups):
                    return
                if self.type_block is not None:
                    self._wait(job, "quota", self.type_block)
                    return
                if job.replicas == 1 and not self.out.reservations and groups is sh.groups:
                    sh.dead = dead = True  # no reservation was in the way: nothing fits at all
            self.failed.add(mk)
        if self._try_preempt(job, groups):
            return
        holder = self._reserved_by(job, groups, sh, dead)
        if holder is not None:
            self._wait(
                job,
                "reserved",
                f"capacity it fits is reserved for {holder} from "
                f"{self._when(self._reservation_start(holder))}; its max_runtime ends later",
            )
            return
        why = self._capacity_reason(sh, groups, job)
        res = self._try_reserve(job, groups)
        if res is not None:
            self._wait(
                job,
                "reservation",
                f"{why}; holds a reservation on {len(res.worker_ids)} worker(s), "
                f"expected to start by {self._when(res.start_at)}",
            )
            return
        self._wait(job, "capacity", why)

    def _shape(self, job: PendingJob) -> _Shape:
        ck = (
            job.pool,
            job.gpu_type if job.gpu else None,
            job.gpu > 0,
            job.preemptible,
            (job.region,) if job.require_region else None,
        )
        groups = self._groups_for(ck, job)
        return _Shape(groups, self._never_reason(groups, job))

    def _when(self, t: float) -> str:
        return f"now+{max(t - self.now, 0.0):.0f}s"

    def _reservation_start(self, job_id: str) -> float:
        for r in self.out.reservations:
            if r.job_id == job_id:
                return r.start_at
        return self.now

    # --- constraints and reasons -------------------------------------------------------------

    def _groups_for(self, ck: tuple[object, ...], job: PendingJob) -> list[_Group]:
        groups = self.ck_groups.get(ck)
        if groups is None:
            groups = [
                g
                for g in self.groups
                if (job.pool is None or g.pool == job.pool)
                and (job.gpu == 0 or job.gpu_type is None or g.gpu_type == job.gpu_type)
                and (job.preemptible or not g.spot)
                and (not job.require_region or g.region == job.region)
            ]
            self.ck_groups[ck] = groups
        return groups

    def _quota_reason(self, t: _T, job: PendingJob) -> tuple[ReasonCode, str] | None:
        q = t.team.quota
        if q is None:
            return None
        n = job.replicas
        checks: list[tuple[str, float | None, float, float]] = [
            ("GPU", q.gpu, t.usage[2], job.gpu * n),
            ("CPU", q.cpu, t.usage[0], job.cpu * n),
            ("memory", q.memory, t.usage[1], job.memory * n),
        ]
        if job.gpu and job.gpu_type and job.gpu_type in q.gpu_by_type:
            typed = (f"{job.gpu_type} GPU", q.gpu_by_type[job.gpu_type], t.by_type.get(job.gpu_type, 0))
            checks.insert(0, (*typed, job.gpu * n))
        for label, limit, _, need in checks:
            if limit is not None and need > limit + EPS:
                return (
                    "never-fits",
                    f"needs {_amount(label, need)} {label}, more than team {t.name}'s {label} quota "
                    f"of {_amount(label, limit)}",
                )
        for label, limit, used, need in checks:
            if limit is not None and need > 0 and used + need > limit + EPS:
                return (
                    "quota",
                    f"team {t.name} at {label} quota {_amount(label, used)}/{_amount(label, limit)}",
                )
        return None

    def _never_reason(self, groups: list[_Group], job: PendingJob) -> str | None:
        if not self.ws:
            return "no schedulable workers are registered"
        prefix = "no registered worker can ever fit: "
        if not groups:
            constraint = []
            if job.pool:
                constraint.append(f"pool {job.pool}")
            if job.gpu and job.gpu_type:
                constraint.append(f"gpu type {job.gpu_type}")
            if job.require_region:
                constraint.append(f"region {job.region}")
            if not job.preemptible and any(g.spot for g in self.groups):
                constraint.append("on-demand (non-spot) capacity")
            return f"{prefix}none matches {' and '.join(constraint) or 'its constraints'}"
        shapes: dict[tuple[float, int, int], int] = {}
        for g in groups:
            for shape, n in g.shapes.items():
                shapes[shape] = shapes.get(shape, 0) + n
        fits = {
            s: n
            for s, n in shapes.items()
            if s[0] + EPS >= job.cpu and s[1] >= job.memory and s[2] >= job.gpu
        }
        if not fits:
            cpu, mem, gpu = max(shapes, key=lambda s: (s[2], s[0], s[1]))
            return (
                f"{prefix}needs {_describe(job)} on one worker; the largest is {cpu:g} cpu, "
                f"{human_memory(mem)} memory, {gpu} gpu"
            )
        if job.replicas > 1:
            slots = self._slots(groups, job)
            if slots < job.replicas:
                return f"{prefix}gang of {job.replicas} replicas of {_describe(job)}; the fleet holds {slots}"
        return None

    def _slots(self, groups: list[_Group], job: PendingJob) -> int:
        """How many replicas of the job an empty fleet of these groups would hold."""
        slots = 0
        for g in groups:
            for (cpu, mem, gpu), n in g.shapes.items():
                per = min(
                    int((cpu + EPS) // job.cpu) if job.cpu > 0 else job.replicas,
                    mem // job.memory if job.memory > 0 else job.replicas,
                    gpu // job.gpu if job.gpu > 0 else job.replicas,
                )
                slots += per * n
        return slots

    def _capacity_reason(self, sh: _Shape, groups: list[_Group], job: PendingJob) -> str:
        largest = -1  # the text names the largest free GPU count only when it is too small
        if job.gpu:
            for g in groups:
                if g.buckets.keys:
                    largest = max(largest, g.buckets.keys[-1] // _LVL_SPAN)
            largest = max(largest, 0)
            if largest >= job.gpu:
                largest = -1
        hit = sh.why.get(largest)
        if hit is not None:
            return hit
        if job.gpu:
            if largest >= 0:
                why = (
                    f"waiting for capacity: needs {job.gpu}×{job.gpu_type or 'gpu'} on one worker; "
                    f"largest free is {largest}"
                )
            else:
                why = f"waiting for capacity: needs {_describe(job)} on one worker"
        else:
            why = f"waiting for capacity: needs {_describe(job)}"
        if job.replicas > 1:
            why += f" for each of {job.replicas} gang replicas"
        sh.why[largest] = why
        return why

    # --- placement ---------------------------------------------------------------------------

    def _res_ok(self, st: _W, job: PendingJob) -> bool:
        res = st.res
        if res is None or res.job_id == job.id:
            return True
        if self.now + job.max_runtime_s <= res.start_at + EPS:
            return True  # EASY backfill: done before the reserved job starts
        s = res.spare
        return s[0] + EPS >= job.cpu and s[1] >= job.memory and s[2] >= job.gpu

    def _search(self, index: _Index, job: PendingJob, lc: int, use_res: bool) -> _W | None:
        """Best fit within one group: fewest free GPUs, then the smallest cpu octave, that fits.

        ``lc`` is the job's cpu octave as a bucket offset: buckets below it hold too little cpu."""
        keys = index.keys
        if not keys:
            return None
        c, m = job.cpu, job.memory
        buckets = index.buckets
        ws = self.ws
        for key in keys[bisect.bisect_left(keys, job.gpu * _LVL_SPAN + lc) :]:
            if key % _LVL_SPAN < lc:
                continue  # more GPUs, but a cpu octave below the demand
            for wid in buckets[key]:
                st = ws[wid]
                if (
                    st.free_mem >= m
                    and st.free_cpu + EPS >= c
                    and (not use_res or st.res is None or self._res_ok(st, job))
                ):
                    return st
        return None

    def _score(self, st: _W, job: PendingJob) -> float:
        cfg = self.cfg
        w = st.w
        score = float(len(st.free_gpus) - job.gpu)
        score += (st.free_cpu - job.cpu) / w.cpu if w.cpu > 0 else 0.0
        if job.region is not None and w.region != job.region:
            score += cfg.region_cost
        if job.preemptible and not w.spot:
            score += cfg.spot_preference_cost
        uris = job.data_uris
        if uris and w.cached_uris:
            covered = 0
            for uri in uris:
                if uri in w.cached_uris:
                    covered += 1
            score -= cfg.cache_bonus * covered / len(uris)
        return score

    def _ranked(self, job: PendingJob, groups: list[_Group]) -> list[tuple[float, _Group]]:
        """The job's groups with their fixed soft cost (region, spot), cheapest first."""
        # Keyed by the list's id, so the entry keeps the list alive: a list that died could hand
        # its id to another job's groups.
        key = (id(groups), job.region, job.preemptible)
        hit = self.ranked_memo.get(key)
        if hit is not None and hit[0] is groups:
            ranked = hit[1]
        else:
            cfg = self.cfg
            costed: list[tuple[float, int, _Group]] = []
            for i, g in enumerate(groups):
                pen = 0.0
                if job.region is not None and g.region != job.region:
                    pen += cfg.region_cost
                if job.preemptible and not g.spot:
                    pen += cfg.spot_preference_cost
                costed.append((pen, i, g))
            costed.sort(key=lambda r: (r[0], r[1]))
            ranked = [(pen, g) for pen, _, g in costed]
            self.ranked_memo[key] = (groups, ranked)
        return ranked

    def _best(self, job: PendingJob, groups: list[_Group], use_res: bool = True) -> _W | None:
        best: _W | None = None
        best_score = math.inf
        best_id = ""
        uris = job.data_uris
        bonus = self.cfg.cache_bonus if uris else 0.0
        c = job.cpu
        lc = max(_level(c), -_LVL_OFFSET) + _LVL_OFFSET if c > 0 else 0  # the job's octave, as in keys
        use_res = use_res and bool(self.out.reservations)  # no reservations: nothing to check
        search = self._search
        score_of = self._score
        for pen, grp in self._ranked(job, groups):
            if pen - bonus > best_score:
                break  # fragmentation and the cache credit cannot make up the group's fixed cost
            st = search(grp.buckets, job, lc, use_res)
            if st is None:
                continue  # nothing fits in this group, so no worker caching the data does either
            score = score_of(st, job)
            if score < best_score or (score == best_score and st.w.id < best_id):
                best, best_score, best_id = st, score, st.w.id
            # Cached data can outweigh best fit: also the best fit among the workers holding it.
            for uri in uris:
                index = grp.cached.get(uri)
                if index is not None:
                    st = search(index, job, lc, use_res)
                    if st is not None:
                        score = score_of(st, job)
                        if score < best_score or (score == best_score and st.w.id < best_id):
                            best, best_score, best_id = st, score, st.w.id
        return best

    def _alloc(self, st: _W, job: PendingJob) -> tuple[int, ...]:
        if self.log is not None:
            self.log.append(self._snapshot_worker(st))
        cpu, mem, gpu = job.cpu, job.memory, job.gpu
        st.free_cpu -= cpu
        st.free_mem -= mem
        free = st.free_gpus
        taken = tuple(free[:gpu])
        if gpu:
            st.free_gpus = free[gpu:]
        end = self.now + job.max_runtime_s
        st.extra.append((end, cpu, mem, gpu))
        res = st.res
        if res is not None and res.job_id != job.id and end > res.start_at + EPS:
            s = res.spare
            res.spare = [s[0] - cpu, s[1] - mem, s[2] - gpu]
        self._rebucket(st)
        return taken

    def _place_now(self, job: PendingJob, groups: list[_Group]) -> bool:
        if job.replicas == 1:
            # The common case needs no undo log: nothing changes unless the job is placed.
            st = self._best(job, groups)
            if st is None or not self._types_within_quota(job, [st]):
                return False
            w = st.w
            gpus = self._alloc(st, job)
            self._add_usage(self.teams[job.team], job.cpu, job.memory, job.gpu, w.gpu_type)
            cross = job.region is not None and w.region != job.region
            self.out.cross_region += cross
            self.out.placements.append(Placement(job.id, w.id, gpus, 0, 1, job.attempt, cross))
            return True
        chosen: list[tuple[_W, tuple[int, ...]]] = []
        self._begin()
        for _ in range(job.replicas):
            st = self._best(job, groups)
            if st is None:
                self._rollback()
                return False
            chosen.append((st, self._alloc(st, job)))
        if not self._types_within_quota(job, [st for st, _ in chosen]):
            self._rollback()
            return False
        self._commit()
        t = self.teams[job.team]
        for rank, (st, gpus) in enumerate(chosen):
            self._add_usage(t, job.cpu, job.memory, job.gpu, st.w.gpu_type)
            cross = job.region is not None and st.w.region != job.region
            self.out.cross_region += cross
            self.out.placements.append(
                Placement(job.id, st.w.id, gpus, rank, job.replicas, job.attempt, cross_region=cross)
            )
        return True

    def _types_with_room(self, t: _T, job: PendingJob, groups: list[_Group]) -> tuple[list[_Group], bool]:
        """For a job that named no GPU type, the groups whose type the team's quota still allows,
        and whether any type it could use would ever allow it."""
        q = t.team.quota
        assert q is not None
        need = job.gpu * job.replicas
        out: list[_Group] = []
        ever = False
        self.type_block = None
        self.type_groups = []
        for g in groups:
            if g.max_gpu < job.gpu:
                continue
            limit = q.gpu_by_type.get(g.gpu_type) if g.gpu_type is not None else None
            used = t.by_type.get(g.gpu_type, 0) if g.gpu_type is not None else 0
            if limit is None or need <= limit:
                ever = True
                self.type_groups.append(g)
            if limit is None or used + need <= limit:
                out.append(g)
            elif need <= limit:
                self.type_block = self.type_block or f"team {t.name} at {g.gpu_type} GPU quota {used}/{limit}"
        if not ever:
            self.type_block = (
                f"no registered worker can ever fit: needs {need} GPUs, more than team {t.name}'s quota "
                "for every GPU type that fits"
            )
        return out, ever

    def _types_within_quota(self, job: PendingJob, workers: list[_W]) -> bool:
        """Per-GPU-type quotas for a job that named no type: checked on the types it would get.

        Only the chosen workers are checked, so such a job may wait at a capped type although
        another type has room; naming the type avoids that.
        """
        if not job.gpu or job.gpu_type is not None:
            return True
        t = self.teams[job.team]
        q = t.team.quota
        if q is None or not q.gpu_by_type:
            return True
        need: dict[str, int] = {}
        for st in workers:
            if st.w.gpu_type is not None:
                need[st.w.gpu_type] = need.get(st.w.gpu_type, 0) + job.gpu
        for gtype, n in sorted(need.items()):
            limit = q.gpu_by_type.get(gtype)
            used = t.by_type.get(gtype, 0)
            if limit is not None and used + n > limit:
                self.type_block = f"team {t.name} at {gtype} GPU quota {used}/{limit}"
                return False
        return True

    # --- preemption --------------------------------------------------------------------------

    def _try_preempt(self, job: PendingJob, groups: list[_Group]) -> bool:
        cfg = self.cfg
        held = bool(job.claimed_workers)
        out_of_budget = (
            self.preempt_attempts >= cfg.max_preemption_attempts_per_cycle
            or len(self.out.preemptions) >= cfg.max_preemptions_per_cycle
        )
        if out_of_budget and not (held and self.draining):
            return False  # the common case once the budget is spent: keep it cheap
        t = self.teams[job.team]
        by_priority = job.priority >= cfg.preempt_min_priority
        mine = t.share_usage()
        after = [mine[0] + job.cpu * job.replicas, mine[1] + job.memory * job.replicas]
        after.append(mine[2] + job.gpu * job.replicas)
        claimant_after = self._share(after)
        reclaim = cfg.fair_share_reclaim and claimant_after <= t.fair + EPS
        if not (by_priority or reclaim or held):
            return False
        if self.preempt_attempts >= cfg.max_preemption_attempts_per_cycle and not held:
            return False
        # Victims only get scarcer within a cycle, so a demand that found none will not find any
        # for the next job of the same shape, priority and team either.
        memo = (groups_key(job), job.priority if by_priority else None, job.team if reclaim else None)
        if memo in self.no_victims and not held:
            return False
        self.preempt_attempts += 1
        claimant_cost = claimant_after / max(t.fair, EPS)
        budget = cfg.max_preemptions_per_cycle - len(self.out.preemptions)

        self._begin()
        claimed: list[_W] = []
        victims: list[tuple[RunningJob, PreemptReason]] = []
        drained = False
        for _ in range(job.replicas):
            st = self._best(job, groups)
            if st is None:
                st = self._drain_fit(job, groups)
                drained = drained or st is not None
            if st is None and budget - len(victims) > 0 and (by_priority or reclaim):
                found = self._victim_fit(job, groups, by_priority, reclaim, claimant_cost)
                if found is not None:
                    st, chosen = found
                    for v, why in chosen:
                        self._doom(v)
                        victims.append((v, why))
            if st is None or len(victims) > budget:
                self._rollback()
                if st is None:
                    self.no_victims.add(memo)
                return False
            self._claim(st, job)
            claimed.append(st)
        if not self._types_within_quota(job, claimed) or not (victims or drained):
            self._rollback()
            return False
        self._commit()
        for st in claimed:
            self._add_usage(t, job.cpu, job.memory, job.gpu, st.w.gpu_type)
        for v, why in victims:
            workers = tuple(sorted({r.worker_id for r in self.gangs[v.id]}))
            self.out.preemptions.append(Preemption(v.id, workers, why, job.id))
        ids = tuple(sorted({st.w.id for st in claimed}))
        self.out.claims[job.id] = ids
        if victims:
            kinds = sorted({why for _, why in victims})
            self._wait(
                job,
                "preempting",
                f"preempting {len(victims)} job(s) ({', '.join(kinds)}) to start on {', '.join(ids)}",
            )
        else:
            self._wait(job, "draining", f"waiting for preempted jobs to stop on {', '.join(ids)}")
        return True

    def _drain_fit(self, job: PendingJob, groups: list[_Group]) -> _W | None:
        for wid in self.draining:
            st = self.ws[wid]
            if (
                self.group_of[wid] in groups
                and st.res is None
                and st.free_cpu + st.drain_cpu + EPS >= job.cpu
                and st.free_mem + st.drain_mem >= job.memory
                and len(st.free_gpus) + len(st.drain_gpus) >= job.gpu
                and (st.drain_cpu > EPS or st.drain_gpus)
            ):
                return st
        return None

    def _victim_fit(
        self,
        job: PendingJob,
        groups: list[_Group],
        by_priority: bool,
        reclaim: bool,
        claimant_cost: float,
    ) -> tuple[_W, list[tuple[RunningJob, PreemptReason]]] | None:
        best: tuple[_VictimCost, _W, list[tuple[RunningJob, PreemptReason]]] | None = None
        over = {
            n for n, t in self.teams.items() if n != job.team and self._share(t.share_usage()) > t.fair + EPS
        }
        if not by_priority and not over:
            return None
        verdicts: dict[str, PreemptReason | None] = {}
        # Victims are sorted by priority first, so victims[0] has the lowest: a worker whose lowest
        # is above the best cost's (highest) priority cannot win, and with no team over its share,
        # one whose lowest is not below the job's has nobody to evict.
        floor = job.priority if not over else None
        for grp in groups:
            if grp.max_gpu < job.gpu:
                continue
            for st in grp.members:
                victims = st.victims
                if not victims or st.res is not None:
                    continue
                lowest = victims[0].priority
                if (best is not None and lowest > best[0][0]) or (floor is not None and lowest >= floor):
                    continue
                vt = st.victim_total  # an upper bound: doomed victims are never added back
                if (
                    st.free_cpu + st.drain_cpu + vt[0] + EPS < job.cpu
                    or st.free_mem + st.drain_mem + vt[1] < job.memory
                    or len(st.free_gpus) + len(st.drain_gpus) + vt[2] < job.gpu
                ):
                    continue
                w = st.w
                chosen = self._victims_on(st, job, verdicts, by_priority, over, claimant_cost)
                if chosen is None:
                    continue
                keys = [self._loss_key(v) for v, _ in chosen]
                size = sum(len(self.gangs[v.id]) for v, _ in chosen)
                cost = (
                    max(k[0] for k in keys),
                    sum(k[1] for k in keys),
                    sum(k[2] for k in keys),
                    size,
                    w.id,
                )
                if best is None or cost < best[0]:
                    best = (cost, st, chosen)
        return None if best is None else (best[1], best[2])

    def _victims_on(
        self,
        st: _W,
        job: PendingJob,
        verdicts: dict[str, PreemptReason | None],
        by_priority: bool,
        over: set[str],
        claimant_cost: float,
    ) -> list[tuple[RunningJob, PreemptReason]] | None:
        cpu = st.free_cpu + st.drain_cpu
        mem = st.free_mem + st.drain_mem
        gpu = float(len(st.free_gpus) + len(st.drain_gpus))
        picked: list[tuple[RunningJob, PreemptReason]] = []
        for v in st.victims:
            why: PreemptReason | None
            if v.id in verdicts:
                why = verdicts[v.id]
            else:
                why = None
                if v.id in self.doomed or v.id == job.id:
                    pass
                elif by_priority and v.priority < job.priority:
                    why = "priority"
                elif v.team in over and self._reclaimable(v, claimant_cost):
                    why = "fair-share reclaim"
                verdicts[v.id] = why
            if why is None:
                continue
            picked.append((v, why))
            freed = st.victim_here[v.id]
            cpu += freed[0]
            mem += freed[1]
            gpu += freed[2]
            if cpu + EPS >= job.cpu and mem >= job.memory and gpu >= job.gpu:
                break
        else:
            return None
        # Greedy by cheapness can pick small victims a later big one made unnecessary: drop those.
        for i in range(len(picked) - 2, -1, -1):
            c, m, g = st.victim_here[picked[i][0].id]
            if cpu - c + EPS >= job.cpu and mem - m >= job.memory and gpu - g >= job.gpu:
                cpu -= c
                mem -= m
                gpu -= g
                del picked[i]
        return picked

    def _reclaimable(self, v: RunningJob, claimant_cost: float) -> bool:
        """The victim's team is over its share and stays at least as far over as the claimant will
        be after placing, so the two teams cannot take the capacity back and forth."""
        t = self.teams[v.team]
        mine = t.share_usage()
        gang = self.gangs[v.id]
        after = self._share(
            (
                mine[0] - sum(r.cpu for r in gang),
                mine[1] - sum(r.memory for r in gang),
                mine[2] - sum(r.gpu for r in gang),
            )
        )
        return after / max(t.fair, EPS) >= claimant_cost - EPS

    def _doom(self, v: RunningJob) -> None:
        self.doomed.add(v.id)
        self._record(lambda: self.doomed.discard(v.id))
        t = self.teams[v.team]
        saved = list(t.leaving)

        def undo() -> None:
            t.changes += 1
            t.leaving = saved

        self._record(undo)
        t.changes += 1
        for r in self.gangs[v.id]:
            t.leaving = [t.leaving[0] + r.cpu, t.leaving[1] + r.memory, t.leaving[2] + r.gpu]
            st = self.ws.get(r.worker_id)
            if st is None:
                continue
            self._record(self._snapshot_worker(st))
            st.dooms += 1  # not undone: a rollback only costs _ends() a rebuild
            st.drain_cpu += r.cpu
            st.drain_mem += r.memory
            st.drain_gpus = st.drain_gpus + list(r.gpu_indices)
            if st.w.id not in self.draining:
                self.draining[st.w.id] = None
                self._record(self._undrain(st.w.id))

    def _undrain(self, wid: str) -> Callable[[], None]:
        def undo() -> None:
            self.draining.pop(wid, None)

        return undo

    def _claim(self, st: _W, job: PendingJob) -> None:
        """Hold capacity for a job that starts once the victims are gone: free first, then draining."""
        self._record(self._snapshot_worker(st))
        from_free = min(st.free_cpu, job.cpu)
        st.free_cpu -= from_free
        st.drain_cpu -= job.cpu - from_free
        from_free_mem = min(st.free_mem, job.memory)
        st.free_mem -= from_free_mem
        st.drain_mem -= job.memory - from_free_mem
        n = min(len(st.free_gpus), job.gpu)
        st.free_gpus = st.free_gpus[n:]
        st.drain_gpus = st.drain_gpus[job.gpu - n :]
        st.extra.append(
            (self.now + self.cfg.termination_grace_s + job.max_runtime_s, job.cpu, job.memory, job.gpu)
        )
        self._rebucket(st)

    # --- reservations (EASY backfill) --------------------------------------------------------

    def _reserved_by(self, job: PendingJob, groups: list[_Group], sh: _Shape, dead: bool) -> str | None:
        if not self.out.reservations or dead:
            return None
        st = self._best(job, groups, use_res=False)
        if st is None:
            if groups is sh.groups:
                sh.dead = True
            return None
        return st.res.job_id if st.res is not None else None

    def _ends(self, st: _W) -> _Ends:
        """What holds the worker, as (end, cpu, memory, gpu) sorted by end, and its totals."""
        # Several reservations look at the same workers; rebuild only when the worker changed. It is
        # never asked mid-transaction, so committed ``extra`` only grows.
        stamp = (len(st.extra), st.dooms)
        hit = self.ends_memo.get(st.w.id)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        grace = self.now + self.cfg.termination_grace_s
        out = list(st.extra)
        for r in st.holders:
            end = grace if r.terminating or r.id in self.doomed else r.started_at + r.max_runtime_s
            out.append((max(end, self.now), r.cpu, r.memory, r.gpu))
        out.sort()
        ends = (out, sum(e[1] for e in out), sum(e[2] for e in out), float(sum(e[3] for e in out)))
        self.ends_memo[st.w.id] = (stamp, ends)
        return ends

    def _earliest(self, st: _W, job: PendingJob, limit: float) -> tuple[float, list[float]] | None:
        """When the job's replica fits on this worker if every holder runs to its bound, and what
        the worker has left over from then on; None if not by ``limit``."""
        w = st.w
        ends, cpu, mem, gpu = self._ends(st)
        t = self.now
        i = 0
        n = len(ends)
        while True:
            spare_cpu = w.cpu - cpu - job.cpu
            spare_mem = w.memory - mem - job.memory
            spare_gpu = w.gpu - gpu - job.gpu
            if spare_cpu >= -EPS and spare_mem >= 0 and spare_gpu >= 0:
                return t, [spare_cpu, spare_mem, spare_gpu]
            if i >= n:
                return None
            t = ends[i][0]
            if t > limit:
                return None
            while i < n and ends[i][0] <= t:
                _, c, m, g = ends[i]
                cpu -= c
                mem -= m
                gpu -= g
                i += 1

    def _try_reserve(self, job: PendingJob, groups: list[_Group]) -> Reservation | None:
        if len(self.out.reservations) >= self.cfg.max_reservations:
            return None
        if self.now - job.queued_at < self.cfg.reserve_after_s:
            return None
        # The ``replicas`` earliest workers, by (start, worker id). Once there are that many, a
        # worker that cannot start by the latest of them is not followed further.
        chosen: list[tuple[float, str, _W, list[float]]] = []
        limit = math.inf
        for grp in groups:
            for st in grp.members:
                w = st.w
                if st.res is not None or w.cpu + EPS < job.cpu or w.memory < job.memory or w.gpu < job.gpu:
                    continue
                found = self._earliest(st, job, limit)
                if found is None:
                    continue
                option = (found[0], w.id, st, found[1])
                if len(chosen) < job.replicas:
                    bisect.insort(chosen, option, key=_start_and_id)
                elif _start_and_id(option) < _start_and_id(chosen[-1]):
                    chosen.pop()
                    bisect.insort(chosen, option, key=_start_and_id)
                if len(chosen) == job.replicas:
                    limit = chosen[-1][0]
        if len(chosen) < job.replicas:
            return None
        # One replica per reserved worker: simpler than packing, and only ever later, never wrong.
        start = max(o[0] for o in chosen)
        for _, _, st, spare in chosen:
            st.res = _Res(job.id, start, spare)
        res = Reservation(job.id, tuple(sorted(o[1] for o in chosen)), start)
        self.out.reservations.append(res)
        return res
