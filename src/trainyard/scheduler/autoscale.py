"""A simple autoscaler in the simulator: the trade of wait time against worker-hours.

The policy acts on the signal the control plane exports (``trainyard_pool_pending_demand``, computed
by :func:`~trainyard.scheduler.demand.cycle_demand` from each cycle's decisions), as a KEDA
ScaledObject or a cluster autoscaler would:

* when a pool and GPU type has had demand for ``scale_after_s`` without a break, it asks for enough
  workers to hold it (the demand over one worker's capacity, resource by resource, less the workers
  already booting for it); each becomes schedulable ``boot_s`` after it is asked for;
* a started worker that has run nothing for ``idle_s`` is removed.

The workload's workers are the shapes there are, and how many of each at most: the on-demand ones
start absent and come and go as above; spot workers (and any worker a reclaim names) stay, as in the
fixed fleet (the cloud still reclaims them). A worker fits a demand when it is in the demand's pool
(any pool for ``default``), of its GPU type (no GPUs for ``none``, some for ``any``), and holds the
largest job's replica.

Worker-hours count a worker from when it is asked for (a booting node is billed) until it is
removed, or until the run ends: at the workload's horizon, or, without one, when the last job has
ended, as the fixed fleet's do (the autoscaler's own pending checks do not keep the run going).
:func:`simulate_autoscaled` returns the same :class:`~.simulate.SimResult` as a fixed-fleet run, so
the two are reported side by side (``yard simulate --autoscale``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

from trainyard.scheduler.decisions import Decisions
from trainyard.scheduler.demand import ANY_GPU, DEFAULT_POOL, NO_GPU, PoolDemand, cycle_demand
from trainyard.scheduler.simulate import EPS, Policy, SimConfig, SimResult, _Host, _Job, _Sim
from trainyard.scheduler.snapshot import Snapshot, Worker
from trainyard.scheduler.workload import Workload

# Event kinds after the simulator's own: boots end and idle checks before the cycle at the same
# instant, the scale check after it (so it sees the cycle's demand).
_BOOTED = 7
_IDLE = 8
_SCALE = 10


@dataclass(frozen=True, slots=True)
class Autoscale:
    """The autoscaler's policy."""

    scale_after_s: float = 300.0
    """Demand must last this long before workers are asked for (KEDA's and the HPA's windows)."""
    boot_s: float = 300.0
    """From asking for a worker to its agent being schedulable (node boot, image pull, register)."""
    idle_s: float = 1800.0
    """A started worker that ran nothing for this long is removed."""


def fits(worker: Worker, row: PoolDemand) -> bool:
    """Whether a worker of this shape would take the demand of ``row`` (see the module docstring)."""
    if row.pool != DEFAULT_POOL and worker.pool != row.pool:
        return False
    if row.gpu_type == NO_GPU:
        if worker.gpu:
            return False
    elif (row.gpu_type == ANY_GPU and not worker.gpu) or (
        row.gpu_type != ANY_GPU and worker.gpu_type != row.gpu_type
    ):
        return False
    big = row.largest
    return big is None or (
        worker.cpu + EPS >= big.cpu and worker.memory >= big.memory and worker.gpu >= big.gpu
    )


def workers_for(row: PoolDemand, worker: Worker) -> int:
    """How many workers of this shape hold the demand, resource by resource (at least one)."""
    need = max(math.ceil(row.cpu / worker.cpu - EPS), math.ceil(row.memory / worker.memory))
    if worker.gpu:
        need = max(need, math.ceil(row.gpu / worker.gpu))
    return max(need, 1)


class _AutoscaledSim(_Sim):
    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        name: str,
        config: SimConfig,
        timer: Callable[[], float] | None,
        autoscale: Autoscale,
    ) -> None:
        super().__init__(workload, policy, name, config, timer)
        self.scale = autoscale
        reclaimed = {r.worker_id for r in workload.reclaims}
        self.scalable: list[_Host] = [
            h for h in self.hosts.values() if not h.w.spot and h.w.id not in reclaimed
        ]
        for h in self.scalable:
            h.present = False
        self.rebuild_workers()
        self.capacity_gpu = sum(w.gpu for w in self.workers_t)
        self.workers_on = len(self.workers_t)
        self.demand: dict[tuple[str, str], PoolDemand] = {}
        self.since: dict[tuple[str, str], float] = {}  # key -> when its demand began
        self.booting: dict[str, tuple[str, str]] = {}  # worker -> the demand it was asked for
        self.idle_token: dict[str, int] = {}  # worker -> the idle check that may remove it
        self.unfinished = len(workload.jobs)

    def after_cycle(self, snapshot: Snapshot | None, decisions: Decisions | None) -> None:
        rows = cycle_demand(snapshot, decisions) if snapshot is not None and decisions is not None else []
        self.demand = {row.key: row for row in rows}
        for key in list(self.since):
            if key not in self.demand:
                del self.since[key]
        for key in self.demand:
            if key not in self.since:
                self.since[key] = self.now
                self.push(self.now + self.scale.scale_after_s, _SCALE, ("", 0))
        self.scale_up()

    def scale_up(self) -> None:
        for key, since in self.since.items():
            if self.now - since + EPS < self.scale.scale_after_s:
                continue
            row = self.demand[key]
            free = [
                h for h in self.scalable if not h.present and h.w.id not in self.booting and fits(h.w, row)
            ]
            if not free:
                continue
            booting = sum(1 for k in self.booting.values() if k == key)
            for h in free[: max(0, workers_for(row, free[0].w) - booting)]:
                self.booting[h.w.id] = key
                self.workers_on += 1
                self.workers_started += 1
                self.push(self.now + self.scale.boot_s, _BOOTED, (h.w.id, 0))

    def on_event(self, kind: int, key: str, n: int) -> None:
        if kind == _SCALE:
            if self.cycle_at is None:  # else the coming cycle scales, on fresher demand
                self.scale_up()
        elif kind == _BOOTED:
            del self.booting[key]
            h = self.hosts[key]
            h.present = True
            self.capacity_gpu += h.w.gpu
            self.rebuild_workers()
            self.changed = True
            self.freed(key)  # idle from the start
        elif kind == _IDLE:
            h = self.hosts[key]
            if self.idle_token.get(key) != n or not h.present or h.gpus or h.cpu > EPS or h.mem > EPS:
                return
            h.present = False
            self.capacity_gpu -= h.w.gpu
            self.workers_on -= 1
            self.rebuild_workers()
        else:
            super().on_event(kind, key, n)

    def finish(self, j: _Job, attempt: int) -> None:
        done = j.finished or j.timed_out
        super().finish(j, attempt)
        if not done and (j.finished or j.timed_out):
            self.unfinished -= 1
            if not self.unfinished and self.wl.horizon_s is None:
                # Every job has ended: so does the run, as the fixed fleet's does, and the
                # autoscaler's pending checks must not carry it on (in place: run() holds the list).
                self.heap[:] = [e for e in self.heap if e[1] not in (_BOOTED, _IDLE, _SCALE)]
                heapq.heapify(self.heap)

    def freed(self, worker_id: str) -> None:
        h = self.hosts[worker_id]
        if h.w.spot or h.gpus or h.cpu > EPS or h.mem > EPS:
            return
        token = self.idle_token.get(worker_id, 0) + 1
        self.idle_token[worker_id] = token
        self.push(self.now + self.scale.idle_s, _IDLE, (worker_id, token))


def simulate_autoscaled(
    workload: Workload,
    policy: Policy,
    autoscale: Autoscale = Autoscale(),
    *,
    name: str = "autoscaled",
    config: SimConfig = SimConfig(),
    timer: Callable[[], float] | None = None,
) -> SimResult:
    """Run ``policy`` over ``workload`` with the on-demand workers under ``autoscale``."""
    if min(autoscale.scale_after_s, autoscale.boot_s, autoscale.idle_s) < 0:
        raise ValueError("scale_after_s, boot_s and idle_s must not be negative")
    if config.cycle_s <= 0 or config.sample_s <= 0 or config.fairness_window_s <= 0:
        raise ValueError("cycle_s, sample_s and fairness_window_s must be positive")
    return _AutoscaledSim(workload, policy, name, config, timer, autoscale).run()
