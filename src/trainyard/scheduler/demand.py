"""The demand an autoscaler could serve: what pending jobs ask for that no worker could take this cycle.

After a cycle, every pending job that did not start has a reason code (``Decisions.reason_codes``).
Only some of them mean "more workers of the right shape would let it start":

* ``capacity``: it fits a worker of its pool and type, but none has room now;
* ``reservation`` / ``reserved``: it waits for capacity that is, or will be, held for a large job;
* ``never-fits``: no registered worker could ever hold it, which is also what a pool scaled to
  zero workers looks like (an autoscaler that adds the right shape makes it fit); but not a job that
  asks for more than its team's quota allows at all, which the scheduler also calls never-fits.

Not counted: ``quota`` (the team is at its ceiling: more workers would not start the job),
``preempting`` and ``draining`` (capacity is already being freed for it), and any other wait, such
as an array's parallelism limit, or dependencies (the scheduler does not see such jobs at all).

Demand is summed per pool and GPU type, the labels an agent is started with (``--pool``,
``--gpu-type``), over every replica: GPUs, cores and bytes of memory. A job that names no pool counts
under ``default`` (where agents started without ``--pool`` land, and as ``trainyard_pending_jobs``
counts it); a CPU-only job under GPU type ``none``, a GPU job that names no type under ``any``. With
each pool and type goes the largest single job's per-replica shape, so that an autoscaler knows the
smallest node that would take it.

Pure, like :func:`~trainyard.scheduler.core.decide`: the leader computes it from each cycle's
decisions, and the simulator's autoscaler from the same, so both act on the same signal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from trainyard.scheduler.capacity import EPS
from trainyard.scheduler.decisions import Decisions, ReasonCode
from trainyard.scheduler.snapshot import PendingJob, Quota, Snapshot, Team

DEMAND_CODES: frozenset[ReasonCode] = frozenset({"capacity", "reservation", "reserved", "never-fits"})
"""The waits that adding workers could end (see the module docstring)."""

DEFAULT_POOL = "default"
NO_GPU = "none"
ANY_GPU = "any"


@dataclass(frozen=True, slots=True)
class ReplicaShape:
    """One replica's demand, and how many replicas start together."""

    cpu: float
    memory: int
    gpu: int
    replicas: int = 1

    def rank(self) -> tuple[int, float, int, int]:
        """Order of size: GPUs first (the scarce resource), then cores, memory and gang size."""
        return (self.gpu, self.cpu, self.memory, self.replicas)


@dataclass(frozen=True, slots=True)
class PoolDemand:
    """The unmet demand of one pool and GPU type: jobs, their total resources and the largest job."""

    pool: str
    gpu_type: str
    jobs: int = 0
    cpu: float = 0.0
    """Cores, over every replica of every counted job."""
    memory: int = 0
    """Bytes."""
    gpu: int = 0
    largest: ReplicaShape | None = None
    """The largest counted job's per-replica shape (``None`` when no job is counted)."""

    @property
    def key(self) -> tuple[str, str]:
        """(pool, gpu_type): the metric's labels besides ``resource``."""
        return (self.pool, self.gpu_type)

    def resources(self) -> dict[str, float]:
        """The demand per metric ``resource`` label: gpu (GPUs), cpu (cores), memory (bytes)."""
        return {"gpu": float(self.gpu), "cpu": self.cpu, "memory": float(self.memory)}


def demand_key(job: PendingJob) -> tuple[str, str]:
    """The pool and GPU type a job's demand counts under."""
    gpu_type = (job.gpu_type or ANY_GPU) if job.gpu else NO_GPU
    return (job.pool or DEFAULT_POOL, gpu_type)


def beyond_quota(job: PendingJob, quota: Quota | None) -> bool:
    """Whether the job asks for more than its team's quota allows even with nothing else running
    (overall CPU, memory or GPUs, or its own GPU type's quota): no number of workers starts it."""
    if quota is None:
        return False
    n = job.replicas
    checks = [(quota.gpu, job.gpu * n), (quota.cpu, job.cpu * n), (quota.memory, job.memory * n)]
    if job.gpu and job.gpu_type and job.gpu_type in quota.gpu_by_type:
        checks.append((quota.gpu_by_type[job.gpu_type], job.gpu * n))
    return any(limit is not None and need > limit + EPS for limit, need in checks)


def unmet_demand(
    pending: Iterable[PendingJob], reason_codes: Mapping[str, ReasonCode], teams: Iterable[Team] = ()
) -> list[PoolDemand]:
    """Per pool and GPU type, what the pending jobs that wait for capacity (``DEMAND_CODES``) ask for,
    sorted by (pool, gpu_type). Jobs without a reason code (placed, or not considered) do not count,
    nor do never-fits jobs beyond their team's quota (``teams``: the snapshot's, with the quotas)."""
    quotas = {t.name: t.quota for t in teams}
    totals: dict[tuple[str, str], PoolDemand] = {}
    for job in pending:
        code = reason_codes.get(job.id)
        if code not in DEMAND_CODES or (code == "never-fits" and beyond_quota(job, quotas.get(job.team))):
            continue
        key = demand_key(job)
        row = totals.get(key) or PoolDemand(*key)
        shape = ReplicaShape(job.cpu, job.memory, job.gpu, job.replicas)
        largest = row.largest if row.largest is not None and row.largest.rank() >= shape.rank() else shape
        n = job.replicas
        totals[key] = PoolDemand(
            row.pool,
            row.gpu_type,
            row.jobs + 1,
            row.cpu + job.cpu * n,
            row.memory + job.memory * n,
            row.gpu + job.gpu * n,
            largest,
        )
    return [totals[k] for k in sorted(totals)]


def cycle_demand(snapshot: Snapshot, decisions: Decisions) -> list[PoolDemand]:
    """:func:`unmet_demand` of one cycle: its snapshot's pending jobs and teams, and its decisions."""
    return unmet_demand(snapshot.pending, decisions.reason_codes, snapshot.teams)
