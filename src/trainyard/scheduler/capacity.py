"""Free capacity through one cycle: each worker's state, the best-fit index, and placing on it.

Schedulable workers are split into :class:`WorkerGroup`\\ s, one per combination of the hard
constraints a job can name (pool, GPU type, region, spot). Within a group, workers are bucketed by
(free GPUs, free-cpu octave) in a :class:`BucketIndex` whose non-empty keys stay sorted, so a best-fit
search visits only buckets that exist, smallest first: a few dict lookups instead of a scan. For
each cached dataset URI, a group lists the few workers that cache it, and a search among them finds
the worker that a bucket index over them alone would (see :meth:`Fleet._first_fit_among`).

:class:`Fleet` owns all of it: it finds the best worker for one replica (fewest free GPUs, then the
smallest cpu octave that fits, with soft costs for region, spot and cached data), takes capacity for
a placement or a claim, and moves a worker between buckets whenever its free capacity changes.
Free capacity only shrinks within a cycle, except when an attempt is rolled back (:mod:`.undo`).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from math import frexp
from typing import TYPE_CHECKING

from trainyard.scheduler.layout import fleet_layout
from trainyard.scheduler.snapshot import PendingJob, RunningJob, SchedulerConfig, Worker
from trainyard.scheduler.undo import Undo, UndoLog

if TYPE_CHECKING:
    from trainyard.scheduler.reservations import WorkerReservation


EPS = 1e-9
"""Slack for comparing cpu (fractional cores) and float sums."""
OCTAVE_OFFSET = 32
"""Cpu octaves are counted from 2**-32 up: far below any real fraction of a core."""
OCTAVE_SLOTS = 128
"""Bucket keys per free-GPU count: ``key = free GPUs * OCTAVE_SLOTS + cpu octave + OCTAVE_OFFSET``."""
_TOP_OCTAVE = OCTAVE_SLOTS - OCTAVE_OFFSET - 1

Hold = tuple[float, float, float, int]
"""Capacity held on a worker until some time: (end, cpu, memory, gpu)."""


_NO_INDEX: tuple[dict[int, dict[str, None]], list[int]] = ({}, [])
"""A worker's index until the fleet puts it in its group's (never written to)."""


def cpu_octave(cpu: float) -> int:
    """The power of two just below ``cpu`` (exact for powers of two): 3 cores is octave 1."""
    # frexp gives cpu = m * 2**e with m in [0.5, 1): e - 1 is the octave, exact for powers of two.
    return math.frexp(cpu)[1] - 1


def fit_keys(cpu: float, gpu: int) -> tuple[int, int]:
    """A demand's (start key, octave key) in a group's bucket index: buckets below the start key
    hold too few GPUs or too little cpu, and a bucket's octave (``key % OCTAVE_SLOTS``) below the
    octave key too little cpu. The octave is the one ``Fleet.rebucket`` files a worker with that
    much cpu under, raised to ``-OCTAVE_OFFSET`` at least."""
    octave_key = frexp(cpu)[1] - 1 + OCTAVE_OFFSET if cpu > 0 else 0
    if octave_key < 0:
        octave_key = 0
    return gpu * OCTAVE_SLOTS + octave_key, octave_key


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


class WorkerState:
    """A schedulable worker's capacity through the cycle: what is free, what is draining (held by jobs
    already told to stop), who holds it, and who could be preempted from it.

    It names no group (``Fleet.group_of`` does): the cycle's objects form no reference cycles, so they
    are freed as soon as ``decide`` returns. A plain slotted class rather than a dataclass: one is built
    per worker, every cycle."""

    __slots__ = (
        "added_holds",
        "bucket_key",
        "doom_count",
        "draining_cpu",
        "draining_gpus",
        "draining_memory",
        "free_cpu",
        "free_gpus",
        "free_memory",
        "holders",
        "index",
        "order",
        "reservation",
        "victim_frees",
        "victims",
        "victims_total",
        "worker",
    )

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.free_cpu = float(worker.cpu)
        self.free_memory = float(worker.memory)
        self.free_gpus = list(range(worker.gpu))
        self.draining_cpu = 0.0
        self.draining_memory = 0.0
        self.draining_gpus: list[int] = []
        self.bucket_key: int | None = None
        """The bucket it is in, in every index it belongs to; None while it has no cpu or memory free."""
        self.holders: list[RunningJob] = []
        """The running jobs (replicas) on it, from the snapshot."""
        self.victims: list[RunningJob] = []
        """Its preemptible holders, one per job, the cheapest loss first."""
        self.victims_total = [0.0, 0.0, 0.0]
        """What preempting every victim would free: cpu, memory, gpu."""
        self.victim_frees: dict[str, list[float]] = {}
        """Victim job id -> what it frees here (every replica of a gang on this worker)."""
        self.added_holds: list[Hold] = []
        """Jobs placed or claimed here this cycle."""
        self.reservation: WorkerReservation | None = None
        self.index: tuple[dict[int, dict[str, None]], list[int]] = _NO_INDEX
        """Its group's index (buckets and keys), where ``Fleet.rebucket`` moves it on every placement."""
        self.order = -1
        """Its bucket key and when it entered that bucket (``Fleet.moves``), as one number, ``key <<
        32 | moves``: a bucket index visits its workers in this order. -1 while in no bucket."""
        self.doom_count = 0
        """Times a holder here was doomed, rolled-back ones included: it keys the reservation
        timeline memo, so a rollback only costs a rebuild."""


_new_state = object.__new__


class BucketIndex:
    """Workers bucketed by ``free GPUs * OCTAVE_SLOTS + free-cpu octave``, with the non-empty keys kept
    sorted so a best-fit search visits only buckets that exist, smallest first. Within a bucket,
    workers keep the order they entered it in (``Fleet.rebucket`` maintains both)."""

    __slots__ = ("buckets", "keys")

    def __init__(self) -> None:
        self.buckets: dict[int, dict[str, None]] = {}  # worker ids: an index holds no WorkerState
        self.keys: list[int] = []


@dataclass(slots=True, eq=False)
class WorkerGroup:
    """Workers that share every hard constraint a job can name: pool, GPU type, region, spot."""

    pool: str
    gpu_type: str | None
    region: str | None
    spot: bool
    members: list[WorkerState] = field(default_factory=list)
    buckets: BucketIndex = field(default_factory=lambda: BucketIndex())
    cached: dict[str, list[WorkerState]] = field(default_factory=dict)
    """Per dataset URI, the members that cache it, less those that left every bucket this cycle
    (``Fleet._uncache``), in no particular order."""
    shapes: dict[tuple[float, int, int], int] = field(default_factory=dict)
    """Distinct worker capacities (cpu, memory, gpu) and how many workers have each."""
    max_gpu: int = 0


def _note_cached(cached: dict[str, list[WorkerState]], host: WorkerState, uris: Iterable[str]) -> None:
    """Index ``host`` under each data URI it caches (its group's ``cached``)."""
    for uri in uris:
        caching = cached.get(uri)
        if caching is None:
            cached[uri] = [host]
        else:
            caching.append(host)


def replica_slots(groups: list[WorkerGroup], job: PendingJob) -> int:
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


class Fleet:
    """The schedulable workers of one cycle, grouped and indexed for best fit.

    Built from the snapshot's workers with everything free; the cycle then charges the running jobs
    (``WorkerState`` fields) and calls :meth:`index_all`."""

    def __init__(
        self,
        workers: tuple[Worker, ...],
        config: SchedulerConfig,
        now: float,
        undo: UndoLog,
        charged: Mapping[str, WorkerState] | None = None,
    ) -> None:
        """``charged``: every schedulable worker already charged with its running replicas (kept
        from cycle to cycle, :mod:`.charged`), copied rather than built with everything free."""
        self.config = config
        self.now = now
        self.undo = undo
        self.workers: dict[str, WorkerState] = {}
        """Schedulable workers by id, in id order."""
        self.group_of: dict[str, WorkerGroup] = {}
        layout = fleet_layout(workers)
        self.gpu_type_of = dict(layout.gpu_type_of)
        """GPU type of every registered worker, schedulable or not: jobs running on a lost or draining
        worker still count against their team's per-type quota."""
        self.draining: dict[str, None] = {}
        """Workers where capacity is draining (jobs told to stop still hold it), in the order found."""
        self.has_reservations = False
        """A reservation was made this cycle: only then does best fit need to check them."""
        self.timeline_version = 0
        """Bumped whenever any worker's holds change (placed, claimed, doomed, rolled back): the
        reservations' ranking of workers by earliest start stays good while it stands still."""
        self.moves = 0
        """Bumped whenever a worker changes bucket: the largest free GPU count of a set of groups
        stands while it stands still."""
        self._largest_memo: dict[int, tuple[list[WorkerGroup], int, int]] = {}
        self._groups_by_constraints: dict[tuple[object, ...], list[WorkerGroup]] = {}
        self._shapes_memo: dict[int, tuple[list[WorkerGroup], dict[tuple[float, int, int], int]]] = {}
        self._ranked_memo: dict[
            tuple[object, ...], tuple[list[WorkerGroup], list[tuple[float, WorkerGroup, bool, bool]]]
        ] = {}

        hosts, group_of = self.workers, self.group_of
        groups = [
            WorkerGroup(*spec, shapes=dict(shapes), max_gpu=max_gpu)
            for spec, shapes, max_gpu in zip(layout.specs, layout.shapes, layout.max_gpu, strict=True)
        ]
        indexes = [(g.buckets.buckets, g.buckets.keys) for g in groups]
        self.indexed = False
        """Every worker is in its bucket already (built from ``charged``): ``index_all`` has
        nothing to do."""
        if charged is not None:
            self._adopt(layout.members, groups, indexes, charged)
            members: tuple[tuple[Worker, int], ...] = ()
        else:
            members = layout.members
        for w, i in members:
            group = groups[i]
            host = hosts[w.id] = WorkerState(w)
            group_of[w.id] = group
            host.index = indexes[i]
            if w.cached_uris:
                _note_cached(group.cached, host, w.cached_uris)
            group.members.append(host)
        self.groups = [groups[i] for i in layout.order]
        """Every group, sorted by (pool, GPU type, region, spot)."""
        self.capacity = layout.capacity
        """The schedulable fleet's total capacity: the denominator of every team's share."""

    def _adopt(
        self,
        members: tuple[tuple[Worker, int], ...],
        groups: list[WorkerGroup],
        indexes: list[tuple[dict[int, dict[str, None]], list[int]]],
        charged: Mapping[str, WorkerState],
    ) -> None:
        """The loop above, for workers that come charged: each a copy of its charged state, in its
        bucket at once (what ``index_all`` would do, in the same order), in one pass: it runs for
        every worker, every cycle."""
        hosts, group_of = self.workers, self.group_of
        moves = self.moves
        for w, i in members:
            t = charged[w.id]
            # WorkerState(w) charged: the copy shares the lists a cycle only reads or replaces
            # (free_gpus, holders, victims, ...) and never changes in place.
            host = _new_state(WorkerState)
            host.worker = w
            host.free_cpu = cpu = t.free_cpu
            host.free_memory = t.free_memory
            host.free_gpus = t.free_gpus
            host.draining_cpu = t.draining_cpu
            host.draining_memory = t.draining_memory
            host.draining_gpus = t.draining_gpus
            host.holders = t.holders
            host.victims = t.victims
            host.victims_total = t.victims_total
            host.victim_frees = t.victim_frees
            host.added_holds = []
            host.reservation = None
            host.doom_count = 0
            host.index = index = indexes[i]
            if cpu > EPS and host.free_memory > 0:
                octave = frexp(cpu)[1] - 1  # as in rebucket()
                if octave > _TOP_OCTAVE:
                    octave = _TOP_OCTAVE
                key = len(host.free_gpus) * OCTAVE_SLOTS + octave + OCTAVE_OFFSET
                buckets = index[0]
                now = buckets.get(key)
                if now is None:
                    buckets[key] = {w.id: None}
                else:
                    now[w.id] = None
                moves += 1
                host.order = key << 32 | moves
                host.bucket_key = key
            else:
                host.order = -1
                host.bucket_key = None
            hosts[w.id] = host
            group = groups[i]
            group_of[w.id] = group
            if w.cached_uris:
                _note_cached(group.cached, host, w.cached_uris)
            group.members.append(host)
        self.moves = moves
        for buckets, keys in indexes:
            keys[:] = sorted(buckets)
        self.indexed = True

    def index_all(self) -> None:
        """Bucket every worker by its free capacity, in id order (once the running jobs are charged).

        What :meth:`rebucket` of each worker in turn does, from no bucket, with each group's sorted
        keys put in once at the end rather than one ``insort`` at a time."""
        if self.indexed:
            return
        self.indexed = True
        hosts = self.workers.values()
        if any(host.bucket_key is not None for host in hosts):
            for host in hosts:
                self.rebucket(host)
            return
        moves = self.moves
        for host in hosts:
            cpu = host.free_cpu
            if cpu > EPS and host.free_memory > 0:
                octave = frexp(cpu)[1] - 1  # as in rebucket()
                if octave > _TOP_OCTAVE:
                    octave = _TOP_OCTAVE
                key = len(host.free_gpus) * OCTAVE_SLOTS + octave + OCTAVE_OFFSET
                buckets = host.index[0]
                now = buckets.get(key)
                if now is None:
                    buckets[key] = {host.worker.id: None}
                else:
                    now[host.worker.id] = None
                moves += 1
                host.order = key << 32 | moves
                host.bucket_key = key
        self.moves = moves
        for group in self.groups:
            index = group.buckets
            index.keys[:] = sorted(index.buckets)

    def rebucket(self, host: WorkerState) -> None:
        """Move the worker to the bucket its free capacity now belongs in, in every index it is in."""
        cpu = host.free_cpu
        if cpu > EPS and host.free_memory > 0:
            # Clamped only from above: cpu > EPS is far above 2**-OCTAVE_OFFSET. cpu_octave(),
            # inlined, and min() spelt out (the builtin parses keywords on every call): this runs on
            # every placement.
            octave = frexp(cpu)[1] - 1
            if octave > _TOP_OCTAVE:
                octave = _TOP_OCTAVE
            key: int | None = len(host.free_gpus) * OCTAVE_SLOTS + octave + OCTAVE_OFFSET
        else:
            key = None  # holds no cpu or memory: nothing can land here
        old = host.bucket_key
        if key == old:
            return
        wid = host.worker.id
        buckets, keys = host.index
        if old is not None:
            was = buckets[old]
            del was[wid]
            if not was:
                del buckets[old]
                del keys[bisect_left(keys, old)]
        self.moves += 1
        if key is not None:
            now = buckets.get(key)
            if now is None:
                buckets[key] = {wid: None}
                insort(keys, key)
            else:
                now[wid] = None
            host.order = key << 32 | self.moves
            if old is None and host.worker.cached_uris:
                self._recache(host)  # back in a bucket (an attempt rolled back)
        else:
            host.order = -1
            if host.worker.cached_uris:
                self._uncache(host)
        host.bucket_key = key

    def _uncache(self, host: WorkerState) -> None:
        """Take a worker that left every bucket out of its group's lists of workers caching data.

        A worker in no bucket never fits (``order`` -1 is below any search's start), so the
        searches among those lists need not visit it; at 10k pending, workers filled during the
        cycle were about a fifth of the visits. Only a rollback brings one back
        (:meth:`_recache`). The order of a list does not matter: a search takes the least
        ``order``, and no two workers share one."""
        cached = self.group_of[host.worker.id].cached
        for uri in host.worker.cached_uris:
            caching = cached[uri]
            if host in caching:
                caching.remove(host)

    def _recache(self, host: WorkerState) -> None:
        """Put a worker back in its group's lists of workers caching data (see :meth:`_uncache`)."""
        cached = self.group_of[host.worker.id].cached
        for uri in host.worker.cached_uris:
            caching = cached[uri]
            if host not in caching:
                caching.append(host)

    def undo_point(self, host: WorkerState) -> Undo:
        """How to put the worker's capacity (and its reservation's spare) back as it is now."""
        saved = (
            host.free_cpu,
            host.free_memory,
            host.free_gpus,
            host.draining_cpu,
            host.draining_memory,
            host.draining_gpus,
            len(host.added_holds),
            list(host.reservation.spare) if host.reservation else None,
        )

        def undo() -> None:
            (
                host.free_cpu,
                host.free_memory,
                host.free_gpus,
                host.draining_cpu,
                host.draining_memory,
                host.draining_gpus,
            ) = saved[:6]
            del host.added_holds[saved[6] :]
            self.timeline_version += 1
            if host.reservation is not None and saved[7] is not None:
                host.reservation.spare = saved[7]
            self.rebucket(host)

        return undo

    # --- which workers a job may use -----------------------------------------------------------

    def groups_for(self, constraints: tuple[object, ...], job: PendingJob) -> list[WorkerGroup]:
        """The groups whose hard constraints the job accepts; ``constraints`` is the job's key for them.

        The same list object is returned for every job with the same key (the memos rely on it)."""
        groups = self._groups_by_constraints.get(constraints)
        if groups is None:
            groups = [
                g
                for g in self.groups
                if (job.pool is None or g.pool == job.pool)
                and (job.gpu == 0 or job.gpu_type is None or g.gpu_type == job.gpu_type)
                and (job.preemptible or not g.spot)
                and (not job.require_region or g.region == job.region)
            ]
            self._groups_by_constraints[constraints] = groups
        return groups

    def shapes_of(self, groups: list[WorkerGroup]) -> dict[tuple[float, int, int], int]:
        """The distinct worker capacities (cpu, memory, gpu) across the groups, with how many
        workers have each (the first group's first, in order). Do not change it: it is shared."""
        # Every new demand shape asks, over a few distinct lists of groups. Keyed by the list's id,
        # the entry keeping the list alive (see ranked).
        hit = self._shapes_memo.get(id(groups))
        if hit is not None and hit[0] is groups:
            return hit[1]
        shapes: dict[tuple[float, int, int], int] = {}
        for g in groups:
            for shape, n in g.shapes.items():
                shapes[shape] = shapes.get(shape, 0) + n
        self._shapes_memo[id(groups)] = (groups, shapes)
        return shapes

    def largest_free_gpus(self, groups: list[WorkerGroup]) -> int:
        """The most free GPUs any worker of the groups has with some cpu and memory free (-1: no
        such worker)."""
        # Asked for every GPU job that waits for capacity, many in a row with nothing moved in
        # between. Keyed by the list's id, the entry keeping the list alive (see ranked).
        hit = self._largest_memo.get(id(groups))
        if hit is not None and hit[0] is groups and hit[1] == self.moves:
            return hit[2]
        largest = -1
        for g in groups:
            keys = g.buckets.keys
            if keys and keys[-1] // OCTAVE_SLOTS > largest:
                largest = keys[-1] // OCTAVE_SLOTS
        self._largest_memo[id(groups)] = (groups, self.moves, largest)
        return largest

    # --- best fit ------------------------------------------------------------------------------

    def best_fit(
        self, job: PendingJob, groups: list[WorkerGroup], use_reservations: bool = True
    ) -> WorkerState | None:
        """The best worker for one replica of the job among the groups, or None if none fits now.

        Lowest cost wins: fragmentation left behind plus the soft costs (region, spot) minus the
        cached-data credit; ties go to the lower worker id. With ``use_reservations``, a reserved
        worker is used only if the reservation admits the job (backfill). See :meth:`fit`."""
        start_key, octave_key = fit_keys(job.cpu, job.gpu)
        return self.fit(job, self.ranked(job, groups), start_key, octave_key, use_reservations)

    def fit(
        self,
        job: PendingJob,
        ranked: list[tuple[float, WorkerGroup, bool, bool]],
        start_key: int,
        octave_key: int,
        use_reservations: bool = True,
    ) -> WorkerState | None:
        """:meth:`best_fit`, given the job's groups ranked by :meth:`ranked` and its keys from
        :func:`fit_keys`: the cycle keeps both per job shape, so a placement works out neither.

        This is the innermost loop of a cycle (once per replica placed, ~8,000 times at 10k
        pending), so the first fit per group and the fit cost are written out here rather than
        called (that, and walking the buckets by position rather than over a slice, took about
        2.5 % off a cold cycle, measured in alternating pairs)."""
        best: WorkerState | None = None
        best_cost = math.inf
        best_id = ""
        uris = job.data_uris
        cfg = self.config
        bonus = cfg.cache_bonus if uris else 0.0
        cpu, mem, gpu = job.cpu, job.memory, job.gpu
        use_reservations = use_reservations and self.has_reservations  # none made: nothing to check
        region_cost, spot_cost = cfg.region_cost, cfg.spot_preference_cost
        hosts = self.workers
        for fixed_cost, group, far, on_demand in ranked:
            if fixed_cost - bonus > best_cost:
                break  # fragmentation and the cache credit cannot make up the group's fixed cost
            # The first fit in the group's index: fewest free GPUs, then the smallest cpu octave,
            # that fits. Buckets below ``start_key`` hold too few GPUs or too little cpu.
            index = group.buckets
            keys = index.keys
            if not keys or keys[-1] < start_key:
                continue  # nothing fits in this group, so no worker caching the data does either
            host = None
            buckets = index.buckets
            # By position rather than over a slice (or a range): the search mostly ends in the
            # first bucket or two, and a slice copies every key above the start.
            i = bisect_left(keys, start_key)
            n = len(keys)
            while i < n:
                key = keys[i]
                i += 1
                if key % OCTAVE_SLOTS < octave_key:
                    continue  # more GPUs, but a cpu octave below the demand
                for wid in buckets[key]:
                    candidate = hosts[wid]
                    if (
                        candidate.free_memory >= mem
                        and candidate.free_cpu + EPS >= cpu
                        and (
                            not use_reservations
                            or candidate.reservation is None
                            or candidate.reservation.admits(job, self.now)
                        )
                    ):
                        host = candidate
                        break
                if host is not None:
                    break
            if host is None:
                continue  # nothing fits in this group, so no worker caching the data does either
            # The fit cost: GPUs and the share of cpu left over, then the soft costs (``far`` and
            # ``on_demand`` are the group's, so every worker's in it), then the cached-data credit.
            w = host.worker
            cost = float(len(host.free_gpus) - gpu)
            cost += (host.free_cpu - cpu) / w.cpu if w.cpu > 0 else 0.0
            if far:
                cost += region_cost
            if on_demand:
                cost += spot_cost
            cached = w.cached_uris
            if uris and cached:
                covered = 0
                for uri in uris:
                    if uri in cached:
                        covered += 1
                cost -= bonus * covered / len(uris)
            if cost < best_cost or (cost == best_cost and w.id < best_id):
                best, best_cost, best_id = host, cost, w.id
            if uris:
                best, best_cost, best_id = self._best_caching(
                    job, group, host, far, on_demand, octave_key, use_reservations, best, best_cost, best_id
                )
        return best

    def _best_caching(
        self,
        job: PendingJob,
        group: WorkerGroup,
        first: WorkerState,
        far: bool,
        on_demand: bool,
        octave_key: int,
        use_reservations: bool,
        best: WorkerState | None,
        best_cost: float,
        best_id: str,
    ) -> tuple[WorkerState | None, float, str]:
        """:meth:`fit`'s best so far (worker, cost, id), bettered by the first fit among the group's
        workers caching each of the job's data URIs: cached data can outweigh best fit.

        That search keeps the group's order, so where the group's ``first`` fit caches the URI, it is
        that search's first fit too: nothing to search. Else it starts past ``first``: the bucket
        walk visited workers in ``order`` and none before it fitted. The fit cost is :meth:`fit`'s,
        the same terms in the same order (so the same floats)."""
        uris, cached, after = job.data_uris, first.worker.cached_uris, first.order + 1
        cfg = self.config
        for uri in uris:
            if uri in cached:
                continue
            caching = group.cached.get(uri)
            if caching is None:
                continue
            host = self._first_fit_among(caching, job, after, octave_key, use_reservations)
            if host is None:
                continue
            w = host.worker
            cost = float(len(host.free_gpus) - job.gpu)
            cost += (host.free_cpu - job.cpu) / w.cpu if w.cpu > 0 else 0.0
            if far:
                cost += cfg.region_cost
            if on_demand:
                cost += cfg.spot_preference_cost
            if w.cached_uris:
                covered = 0
                for u in uris:
                    if u in w.cached_uris:
                        covered += 1
                cost -= cfg.cache_bonus * covered / len(uris)
            if cost < best_cost or (cost == best_cost and w.id < best_id):
                best, best_cost, best_id = host, cost, w.id
        return best, best_cost, best_id

    def _first_fit_among(
        self,
        hosts: list[WorkerState],
        job: PendingJob,
        after: int,
        octave_key: int,
        use_reservations: bool,
    ) -> WorkerState | None:
        """What the first fit in :meth:`fit` would find in a bucket index over these workers alone,
        among those whose ``order`` is ``after`` or more: the one that fits in the lowest bucket
        (octave at least ``octave_key``), the earliest to enter it on a tie.

        A bucket index per cached URI gave the same answer, but each placement then moved its
        worker in four indexes rather than one; a URI's workers in a group are a handful."""
        best: WorkerState | None = None
        best_order = 1 << 60  # above any order (an int: comparing an int with inf is slower)
        cpu, mem = job.cpu, job.memory
        for host in hosts:
            order = host.order
            if (
                after <= order < best_order
                and (order >> 32) % OCTAVE_SLOTS >= octave_key
                and host.free_memory >= mem
                and host.free_cpu + EPS >= cpu
                and (
                    not use_reservations or host.reservation is None or host.reservation.admits(job, self.now)
                )
            ):
                best, best_order = host, order
        return best

    def ranked(
        self, job: PendingJob, groups: list[WorkerGroup]
    ) -> list[tuple[float, WorkerGroup, bool, bool]]:
        """The job's groups with their fixed soft cost (region, spot), cheapest first, each with
        whether the region cost and the spot cost apply to it."""
        # Keyed by the list's id, so the entry keeps the list alive: a list that died could hand
        # its id to another job's groups.
        key = (id(groups), job.region, job.preemptible)
        hit = self._ranked_memo.get(key)
        if hit is not None and hit[0] is groups:
            return hit[1]
        cfg = self.config
        costed: list[tuple[float, int, WorkerGroup, bool, bool]] = []
        for i, g in enumerate(groups):
            fixed_cost = 0.0
            far = job.region is not None and g.region != job.region
            on_demand = job.preemptible and not g.spot
            if far:
                fixed_cost += cfg.region_cost
            if on_demand:
                fixed_cost += cfg.spot_preference_cost
            costed.append((fixed_cost, i, g, far, on_demand))
        costed.sort(key=lambda r: (r[0], r[1]))
        ranked = [(fixed_cost, g, far, on_demand) for fixed_cost, _, g, far, on_demand in costed]
        self._ranked_memo[key] = (groups, ranked)
        return ranked

    # --- taking capacity -----------------------------------------------------------------------

    def allocate(self, host: WorkerState, job: PendingJob) -> tuple[int, ...]:
        """Take one replica's capacity from the worker's free capacity now; the GPU indices taken."""
        entries = self.undo.entries
        if entries is not None:
            entries.append(self.undo_point(host))
        cpu, mem, gpu = job.cpu, job.memory, job.gpu
        host.free_cpu -= cpu
        host.free_memory -= mem
        taken: tuple[int, ...] = ()
        if gpu:
            free = host.free_gpus
            taken = tuple(free[:gpu])
            host.free_gpus = free[gpu:]
        end = self.now + job.max_runtime_s
        host.added_holds.append((end, cpu, mem, gpu))
        self.timeline_version += 1
        reservation = host.reservation
        if reservation is not None:
            reservation.overlap(job.id, end, cpu, mem, gpu)
        self.rebucket(host)
        return taken

    def claim(self, host: WorkerState, job: PendingJob) -> None:
        """Hold capacity for a job that starts once the victims are gone: free first, then draining."""
        self.undo.record(self.undo_point(host))
        from_free = min(host.free_cpu, job.cpu)
        host.free_cpu -= from_free
        host.draining_cpu -= job.cpu - from_free
        from_free_mem = min(host.free_memory, job.memory)
        host.free_memory -= from_free_mem
        host.draining_memory -= job.memory - from_free_mem
        n = min(len(host.free_gpus), job.gpu)
        host.free_gpus = host.free_gpus[n:]
        host.draining_gpus = host.draining_gpus[job.gpu - n :]
        host.added_holds.append(
            (self.now + self.config.termination_grace_s + job.max_runtime_s, job.cpu, job.memory, job.gpu)
        )
        self.timeline_version += 1
        self.rebucket(host)
