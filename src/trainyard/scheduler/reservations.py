"""EASY reservations and backfill: a blocked job holds the workers where it starts earliest.

The first blocked jobs of a cycle (up to ``max_reservations``, once they have waited
``reserve_after_s``) each get a :class:`~trainyard.scheduler.decisions.Reservation`: assuming every
running job runs to its ``max_runtime``, the workers where the job could start earliest are held for
it from that time. A later job may still use a reserved worker (backfill) if it ends before the
reservation starts, or if it fits in what the reservation leaves over; :class:`WorkerReservation`
keeps that rule and that leftover.
"""

from __future__ import annotations

import bisect
import math
import operator
from dataclasses import dataclass

from trainyard.scheduler.capacity import EPS, Fleet, Hold, WorkerGroup, WorkerState
from trainyard.scheduler.decisions import Reservation
from trainyard.scheduler.snapshot import PendingJob, SchedulerConfig

Timeline = tuple[list[Hold], float, float, float]
"""What holds a worker, sorted by end, and the cpu, memory and gpu held in total."""

Start = tuple[float, list[float]]
"""When a replica could start on a worker, and what the worker has left over from then on."""

Option = tuple[float, str, WorkerState, list[float]]
"""A worker a replica could start on: (start, worker id, the worker, what it leaves over)."""

_start_and_id = operator.itemgetter(0, 1)


@dataclass(slots=True)
class WorkerReservation:
    """A worker held for a blocked job from ``start_at``, with what it leaves over from then on."""

    job_id: str
    start_at: float
    spare: list[float]
    """cpu, memory, gpu left over at ``start_at`` once the reserved job is in."""

    def admits(self, job: PendingJob, now: float) -> bool:
        """Whether the job may start on the reserved worker now without delaying the reserved job."""
        if self.job_id == job.id:
            return True
        if now + job.max_runtime_s <= self.start_at + EPS:
            return True  # EASY backfill: done before the reserved job starts
        s = self.spare
        return s[0] + EPS >= job.cpu and s[1] >= job.memory and s[2] >= job.gpu

    def overlap(self, job_id: str, end: float, cpu: float, memory: float, gpu: int) -> None:
        """A job placed on the worker until ``end``: if it is still there at the start, it uses spare."""
        if job_id != self.job_id and end > self.start_at + EPS:
            s = self.spare
            self.spare = [s[0] - cpu, s[1] - memory, s[2] - gpu]


class Reservations:
    """Makes and looks up the cycle's reservations.

    ``reservations`` is the cycle's output list; ``doomed`` the ids of running jobs preempted this
    cycle (they end after the grace period, not at their ``max_runtime``)."""

    def __init__(
        self,
        fleet: Fleet,
        config: SchedulerConfig,
        now: float,
        reservations: list[Reservation],
        doomed: set[str],
    ) -> None:
        self.fleet = fleet
        self.config = config
        self.now = now
        self.reservations = reservations
        self.doomed = doomed
        self._timelines: dict[str, tuple[tuple[int, int], Timeline]] = {}
        self._rankings: dict[
            tuple[int, float, int, int], tuple[list[WorkerGroup], int, list[Option] | None]
        ] = {}

    def start_of(self, job_id: str) -> float:
        """When the job's reservation starts (now if it has none)."""
        for r in self.reservations:
            if r.job_id == job_id:
                return r.start_at
        return self.now

    def try_reserve(self, job: PendingJob, groups: list[WorkerGroup]) -> Reservation | None:
        """Reserve the workers where the job starts earliest, one per replica, if it may have one."""
        if len(self.reservations) >= self.config.max_reservations:
            return None
        if self.now - job.queued_at < self.config.reserve_after_s:
            return None
        # The ``replicas`` earliest workers, by (start, worker id), among those not yet reserved.
        # Blocked jobs of one shape often come one after another with nothing placed in between
        # (the leader's queue of jobs that fit nowhere): the second ranks every worker once, and
        # the rest take the ranking. A shape seen once only searches, which stops early.
        version = self.fleet.timeline_version
        key = (id(groups), job.cpu, job.memory, job.gpu)
        seen = self._rankings.get(key)
        if seen is None or seen[0] is not groups or seen[1] != version:
            chosen = self._search(job, groups)
            self._rankings[key] = (groups, version, None)
        else:
            ranked = seen[2]
            if ranked is None:
                ranked = self._rank(job, groups)
                self._rankings[key] = (groups, version, ranked)
            chosen = []
            for option in ranked:
                if option[2].reservation is None:
                    chosen.append(option)
                    if len(chosen) == job.replicas:
                        break
        if len(chosen) < job.replicas:
            return None
        # One replica per reserved worker: simpler than packing, and only ever later, never wrong.
        start = max(o[0] for o in chosen)
        for _, _, host, spare in chosen:
            host.reservation = WorkerReservation(job.id, start, list(spare))  # the memo keeps its own
        self.fleet.has_reservations = True
        reservation = Reservation(job.id, tuple(sorted(o[1] for o in chosen)), start)
        self.reservations.append(reservation)
        return reservation

    def _search(self, job: PendingJob, groups: list[WorkerGroup]) -> list[Option]:
        """The ``replicas`` workers, not reserved, where the job's replicas start earliest, by (start,
        worker id); fewer if there are not that many."""
        # Once there are that many, a worker that cannot start by the latest of them is not
        # followed further.
        chosen: list[Option] = []
        limit = math.inf
        for group in groups:
            for host in group.members:
                w = host.worker
                if (
                    host.reservation is not None
                    or w.cpu + EPS < job.cpu
                    or w.memory < job.memory
                    or w.gpu < job.gpu
                ):
                    continue
                found = self._earliest_start(host, job, limit)
                if found is None:
                    continue
                option = (found[0], w.id, host, found[1])
                if len(chosen) < job.replicas:
                    bisect.insort(chosen, option, key=_start_and_id)
                elif _start_and_id(option) < _start_and_id(chosen[-1]):
                    chosen.pop()
                    bisect.insort(chosen, option, key=_start_and_id)
                if len(chosen) == job.replicas:
                    limit = chosen[-1][0]
        return chosen

    def _rank(self, job: PendingJob, groups: list[WorkerGroup]) -> list[Option]:
        """Every worker of the groups where the job's replica could ever start, reserved ones
        included, by (start, worker id): the first ``replicas`` not reserved are what
        :meth:`_search` finds, while no worker's holds change."""
        ranked: list[Option] = []
        for group in groups:
            for host in group.members:
                w = host.worker
                if w.cpu + EPS < job.cpu or w.memory < job.memory or w.gpu < job.gpu:
                    continue
                found = self._earliest_start(host, job, math.inf)
                if found is not None:
                    ranked.append((found[0], w.id, host, found[1]))
        ranked.sort(key=_start_and_id)
        return ranked

    def _timeline(self, host: WorkerState) -> Timeline:
        """What holds the worker, as (end, cpu, memory, gpu) sorted by end, and its totals."""
        # Several reservations look at the same workers; rebuild only when the worker changed. It is
        # never asked mid-attempt, so committed ``added_holds`` only grows.
        stamp = (len(host.added_holds), host.doom_count)
        hit = self._timelines.get(host.worker.id)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        grace = self.now + self.config.termination_grace_s
        holds = list(host.added_holds)
        now = self.now
        for r in host.holders:
            end = grace if r.terminating or r.id in self.doomed else r.started_at + r.max_runtime_s
            # max(end, now), without the builtin's keyword parsing: a few holders per worker, every
            # worker a reservation looks at.
            holds.append((now if now > end else end, r.cpu, r.memory, r.gpu))
        holds.sort()
        if holds:
            # The same sums, in the same (sorted) order, over columns rather than generators.
            _, cpus, mems, gpus = zip(*holds, strict=True)
            timeline = (holds, sum(cpus), sum(mems), float(sum(gpus)))
        else:
            timeline = (holds, 0, 0, 0.0)
        self._timelines[host.worker.id] = (stamp, timeline)
        return timeline

    def _earliest_start(self, host: WorkerState, job: PendingJob, limit: float) -> Start | None:
        """When the job's replica fits on this worker if every holder runs to its bound, and what
        the worker has left over from then on; None if not by ``limit``."""
        w = host.worker
        holds, cpu, mem, gpu = self._timeline(host)
        start = self.now
        i = 0
        n = len(holds)
        while True:
            spare_cpu = w.cpu - cpu - job.cpu
            spare_mem = w.memory - mem - job.memory
            spare_gpu = w.gpu - gpu - job.gpu
            if spare_cpu >= -EPS and spare_mem >= 0 and spare_gpu >= 0:
                return start, [spare_cpu, spare_mem, spare_gpu]
            if i >= n:
                return None
            start = holds[i][0]  # the next time something ends
            if start > limit:
                return None
            while i < n and holds[i][0] <= start:
                _, c, m, g = holds[i]
                cpu -= c
                mem -= m
                gpu -= g
                i += 1
