"""The running replicas charged to workers and teams, kept from one cycle to the next.

A cycle starts from what the snapshot's running replicas hold: each worker's free capacity, its
draining capacity and victims, each team's usage. Worked out afresh (``Cycle._charge_running_jobs``)
that is a sort of every running replica and a pass charging each of them: at ~10,000 running it was
most of a simulated day's time (py-spy: charging 36 % of ``decide()``, the sorts 10 %), although
from one cycle to the next only a few replicas start, end, stop or checkpoint.

:class:`RunningCharge` keeps that state between cycles. Each cycle it compares the snapshot's
running replicas with the last cycle's by identity (the simulator, like any caller that keeps its
``RunningJob`` objects, hands over the same objects for replicas that did not change: a changed
replica is a new object), and charges again only the workers whose replicas changed, from scratch
and in the running order, so each worker's state is the very one a full charge gives. Team usage is
kept by adding and subtracting, which gives the same floats as summing in the running order only
while every partial sum is exact: every cpu a multiple of 1/1024, memory and GPUs whole, their
totals below 2**53. Otherwise (:attr:`RunningCharge.exact` false) the cycle sums the teams' usage
the full way, from the sorted running replicas.

A snapshot unrelated to the last (most replicas new objects, as from the leader, which reads them
from the store each cycle) is charged the full way and not kept: keeping it would cost a second
charge. Two related snapshots in a row start keeping state. A replica listed twice, or two with the
same (id, replica) on one worker, makes the running order ambiguous: such a snapshot is charged the
full way too.

``decide`` is still a pure function of its snapshot: this is a cache of what the snapshot's running
replicas hold, and ``tests/unit/scheduler/test_charged.py`` checks it against a full charge after
random sequences of changes. One cycle at a time uses it (a lock; another thread's cycle meanwhile
charges the full way).
"""

from __future__ import annotations

import math
import operator
import threading
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager

from trainyard.scheduler.capacity import WorkerState
from trainyard.scheduler.layout import FleetLayout, fleet_layout
from trainyard.scheduler.snapshot import ResourceVector, RunningJob, Snapshot, Worker

_EXACT_LIMIT = 1 << 53
_CPU_SCALE = 1024
"""cpu in steps of 1/1024 core, memory and GPUs whole: sums of such numbers stay exact in a float."""

_by_id = operator.attrgetter("id")
_by_id_replica = operator.attrgetter("id", "replica")
_by_replica_worker = operator.attrgetter("replica", "worker_id")


class Ambiguous(Exception):
    """Two replicas tie on (id, replica, worker): their order is the snapshot's, which is not kept."""


def charge_host(host: WorkerState, replicas: list[RunningJob]) -> None:
    """Charge the worker's running replicas (in the running order) to its state."""
    host.holders = replicas
    free_cpu, free_memory = host.free_cpu, host.free_memory
    used: set[int] = set()
    for r in replicas:
        cpu, mem, gpu = r.cpu, r.memory, r.gpu
        free_cpu -= cpu
        free_memory -= mem
        taken: list[int] | tuple[int, ...] = r.gpu_indices
        if gpu and not taken:
            taken = [g for g in host.free_gpus if g not in used][:gpu]
        if taken:
            used.update(taken)
        if r.terminating:
            host.draining_cpu += cpu
            host.draining_memory += mem
            host.draining_gpus.extend(sorted(taken))
        elif r.preemptible:
            # Replicas of one gang on one worker go together: one victim, their sum freed.
            rid = r.id
            frees = host.victim_frees.get(rid)
            if frees is None:
                host.victims.append(r)
                host.victim_frees[rid] = [cpu, mem, gpu]
            else:
                frees[0] += cpu
                frees[1] += mem
                frees[2] += gpu
            total = host.victims_total
            total[0] += cpu
            total[1] += mem
            total[2] += gpu
    host.free_cpu, host.free_memory = free_cpu, free_memory
    if used:
        host.free_gpus = [g for g in host.free_gpus if g not in used]


class Gangs(dict[str, list[RunningJob]]):
    """Each running job's replicas by (replica, worker), as the running order has them, worked out
    when first asked for (only victims' are)."""

    __slots__ = ("jobs",)

    def __init__(self, jobs: dict[str, dict[int, RunningJob]]) -> None:
        super().__init__()
        self.jobs = jobs

    def __missing__(self, job_id: str) -> list[RunningJob]:
        replicas = sorted(self.jobs[job_id].values(), key=_by_replica_worker)
        self[job_id] = replicas
        return replicas


class RunningCharge:
    """What the running replicas of the last snapshot hold, per worker and per team."""

    __slots__ = (
        "by_id",
        "capacity",
        "counts",
        "inexact",
        "jobs",
        "kept",
        "layout",
        "on",
        "stopping",
        "templates",
        "totals",
        "touched",
        "usage",
        "workers",
    )

    def __init__(self) -> None:
        self.touched: set[str] = set()
        """Worker ids whose replicas changed in this update."""
        self._reset()

    def _reset(self) -> None:
        """Forget every snapshot."""
        self.kept = False
        """Whether the state below is the last snapshot's (else only ``by_id`` is: a candidate)."""
        self.by_id: dict[int, RunningJob] = {}
        """The last snapshot's running replicas by ``id()`` (holding them keeps the ids unique)."""
        self.on: dict[str, dict[int, RunningJob]] = {}
        """Each worker's replicas (any worker id a replica names), by ``id()``."""
        self.jobs: dict[str, dict[int, RunningJob]] = {}
        """Each running job's replicas, by ``id()``."""
        self.layout: FleetLayout | None = None
        self.templates: dict[str, WorkerState] = {}
        """Every schedulable worker of ``layout``, charged with its replicas and not yet indexed:
        a cycle works on copies (``Fleet._adopt``)."""
        self.stopping: dict[str, tuple[str, int, str]] = {}
        """Workers of ``templates`` with a terminating replica: the first one's (id, replica, worker)."""
        self.usage: dict[str, list[float]] = {}
        """Each team with running replicas: their cpu, memory and GPUs summed."""
        self.counts: dict[str, int] = {}
        """Each team with running replicas: how many."""
        self.totals = [0, 0, 0]
        """Every exact replica's cpu (in 1/1024 cores), memory and GPUs, summed as integers."""
        self.inexact = 0
        """Replicas whose numbers are not exact steps (see the module docstring)."""
        self.workers: tuple[Worker, ...] | None = None
        self.capacity = ResourceVector()
        """``capacity_of`` the snapshot's workers (``workers``)."""

    @property
    def exact(self) -> bool:
        """Whether the teams' usage is the sums in the running order, to the last bit."""
        totals = self.totals
        return (
            self.inexact == 0
            and totals[0] < _EXACT_LIMIT
            and totals[1] < _EXACT_LIMIT
            and totals[2] < _EXACT_LIMIT
        )

    def update(self, snapshot: Snapshot) -> bool:
        """Bring the state to this snapshot's running replicas; whether the cycle may use it."""
        running = snapshot.running
        new = dict(zip(map(id, running), running, strict=True))
        if len(new) != len(running):
            self._reset()
            return False  # a replica listed twice
        old = self.by_id
        if not old:
            # Nothing running before (the first snapshot, the first since forget(), or after an
            # empty one): only remembered, as a candidate.
            self._reset()
            self.by_id = new
            return False
        came_ids = new.keys() - old.keys()
        if len(came_ids) * 2 > len(running):
            # Unrelated to the last snapshot: charge it the full way, keep it as a candidate.
            self._reset()
            self.by_id = new
            return False
        try:
            if self.kept:
                gone = [old[i] for i in old.keys() - new.keys()]
                self._apply(*self._swap(gone, [new[i] for i in came_ids]))
            else:
                self._reset()
                self._apply([], list(running))
            self.by_id = new
            self._refresh(snapshot.workers)
        except Ambiguous:
            self._reset()
            self.by_id = new
            return False
        self.kept = True
        return True

    def _swap(
        self, gone: list[RunningJob], came: list[RunningJob]
    ) -> tuple[list[RunningJob], list[RunningJob]]:
        """Put each new replica that only replaces an old one of the same (id, replica, worker) with
        the same charge (a checkpoint's new ``last_checkpoint_at``, say) in the old one's place,
        without charging its worker again; the replicas left to take out and to add."""
        if not gone or not came:
            return gone, came
        olds = {_by_place(r): r for r in gone}
        rest: list[RunningJob] = []
        swapped = False
        for r in came:
            place = _by_place(r)
            was = olds.get(place)
            if was is None or not _same_charge(was, r):
                rest.append(r)
                continue
            del olds[place]
            swapped = True
            key, new_key = id(was), id(r)
            mine = self.on[r.worker_id]
            del mine[key]
            mine[new_key] = r
            gang = self.jobs[r.id]
            del gang[key]
            gang[new_key] = r
            t = self.templates.get(r.worker_id)
            if t is not None:
                # In place: only a cycle reads these lists (and makes its own to change them), and
                # one cycle at a time holds the charge. Both lists are in the running order.
                holders = t.holders
                i = bisect_left(holders, (r.id, r.replica), key=_by_id_replica)
                if holders[i] is not was:
                    raise Ambiguous  # not where the running order puts it: never expected
                holders[i] = r
                victims = t.victims
                if victims and r.preemptible and not r.terminating:
                    i = bisect_left(victims, r.id, key=_by_id)
                    if i < len(victims) and victims[i] is was:
                        victims[i] = r  # else another replica of its gang stands for it
        if not swapped:
            return gone, came
        return list(olds.values()), rest

    def _apply(self, gone: list[RunningJob], came: list[RunningJob]) -> None:
        """Take the replicas that ended or changed out, add the new ones; the workers touched are
        charged again (``_refresh``)."""
        on, jobs, usage, counts = self.on, self.jobs, self.usage, self.counts
        touched = self.touched
        touched.clear()
        for r in gone:
            key, wid, team = id(r), r.worker_id, r.team
            touched.add(wid)
            mine = on[wid]
            del mine[key]
            if not mine:
                del on[wid]
            gang = jobs[r.id]
            del gang[key]
            if not gang:
                del jobs[r.id]
            n = counts[team] - 1
            if n:
                counts[team] = n
                u = usage[team]
                u[0] -= r.cpu
                u[1] -= r.memory
                u[2] -= r.gpu
            else:
                del counts[team]
                del usage[team]
            self._weigh(r, -1)
        for r in came:
            key, wid, team = id(r), r.worker_id, r.team
            touched.add(wid)
            now_on = on.get(wid)
            if now_on is None:
                on[wid] = {key: r}
            else:
                now_on[key] = r
            now_in = jobs.get(r.id)
            if now_in is None:
                jobs[r.id] = {key: r}
            else:
                now_in[key] = r
            had = usage.get(team)
            if had is None:
                usage[team] = [0.0 + r.cpu, 0.0 + r.memory, 0.0 + r.gpu]
                counts[team] = 1
            else:
                had[0] += r.cpu
                had[1] += r.memory
                had[2] += r.gpu
                counts[team] += 1
            self._weigh(r, 1)

    def _weigh(self, r: RunningJob, sign: int) -> None:
        """Count the replica's numbers in the exactness totals (``sign`` 1) or out of them (-1)."""
        cpu = r.cpu * _CPU_SCALE
        mem, gpu = r.memory, r.gpu
        if cpu % 1 == 0 and mem % 1 == 0 and gpu % 1 == 0:
            totals = self.totals
            totals[0] += sign * abs(int(cpu))
            totals[1] += sign * abs(int(mem))
            totals[2] += sign * abs(int(gpu))
        else:
            self.inexact += sign

    def _refresh(self, workers: tuple[Worker, ...]) -> None:
        """Charge again every schedulable worker whose replicas (or whose ``Worker``) changed."""
        on, touched = self.on, self.touched
        if workers is not self.workers:
            self.workers = workers
            cpu = mem = gpu = 0.0
            for w in workers:  # capacity_of(), in the snapshot's order
                if w.schedulable:
                    cpu += w.cpu
                    mem += w.memory
                    gpu += w.gpu
            self.capacity = ResourceVector(cpu, mem, gpu)
        layout = fleet_layout(workers)
        templates = self.templates
        if layout is not self.layout:
            self.layout = layout
            fresh: dict[str, WorkerState] = {}
            for w, _ in layout.members:
                t = templates.get(w.id)
                if t is None or t.worker is not w or w.id in touched:
                    t = self._template(w)
                fresh[w.id] = t
            self.templates = fresh
            stopping = self.stopping
            for wid in [wid for wid in stopping if wid not in fresh]:
                del stopping[wid]
        else:
            for wid in touched:
                t = templates.get(wid)
                if t is not None:
                    templates[wid] = self._template(t.worker)
        for wid in touched:
            mine = on.get(wid)
            if mine is not None and len(mine) > 1 and wid not in self.templates:
                _in_order(mine)  # raises on a tie (a schedulable worker's: in _template)
        touched.clear()

    def _template(self, w: Worker) -> WorkerState:
        """The worker charged with its replicas, in the running order."""
        t = WorkerState(w)
        mine = self.on.get(w.id)
        self.stopping.pop(w.id, None)
        if mine:
            replicas = _in_order(mine)
            charge_host(t, replicas)
            for r in replicas:
                if r.terminating:
                    self.stopping[w.id] = (r.id, r.replica, w.id)
                    break
        return t

    def draining(self) -> list[str]:
        """The workers with terminating replicas, in the running order of their first one."""
        stopping = self.stopping
        return sorted(stopping, key=stopping.__getitem__)

    def gangs(self) -> Gangs:
        """Each running job's replicas, in the running order, as asked for."""
        return Gangs(self.jobs)


_by_place = operator.attrgetter("id", "replica", "worker_id")
_charge_of = operator.attrgetter("team", "cpu", "memory", "gpu", "gpu_indices", "terminating", "preemptible")


def _same_charge(a: RunningJob, b: RunningJob) -> bool:
    """Whether the two replicas charge their worker and team alike (to the sign of a zero)."""
    return _charge_of(a) == _charge_of(b) and (
        (a.cpu != 0 or math.copysign(1.0, a.cpu) == math.copysign(1.0, b.cpu))
        and (a.memory != 0 or math.copysign(1.0, a.memory) == math.copysign(1.0, b.memory))
    )


def _in_order(replicas: dict[int, RunningJob]) -> list[RunningJob]:
    """One worker's replicas by (id, replica); raises ``Ambiguous`` on a tie."""
    out = sorted(replicas.values(), key=_by_id_replica)
    keys = list(map(_by_id_replica, out))
    if any(map(operator.eq, keys, keys[1:])):
        raise Ambiguous
    return out


_kept = RunningCharge()
_kept_lock = threading.Lock()


def forget() -> None:
    """Drop the kept charge: the next cycle charges the full way (a benchmark of a cold cycle)."""
    with _kept_lock:
        _kept._reset()


@contextmanager
def charged_for(snapshot: Snapshot) -> Iterator[RunningCharge | None]:
    """The kept charge brought to this snapshot, for the length of one cycle; None where the cycle
    must charge the full way (see the module docstring)."""
    if not _kept_lock.acquire(blocking=False):
        yield None  # another thread's cycle holds it
        return
    try:
        yield _kept if _kept.update(snapshot) else None
    finally:
        _kept_lock.release()
