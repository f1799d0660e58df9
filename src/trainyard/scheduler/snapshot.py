"""What scheduler v2 sees: an immutable snapshot of teams, workers, pending and running jobs.

The leader loop builds one of these from the store each cycle and hands it to
:func:`trainyard.scheduler.core.decide`. Everything the decision depends on is in here, the clock
included (``Snapshot.now``), so the same snapshot always yields the same decisions and a test or the
simulator can replay any moment.

A worker's used capacity is not a field of its own: it is the sum of the running jobs that name it.
One source of truth means a snapshot cannot say a worker is busy with GPUs no job holds (or the
reverse), and it is what preemption needs anyway: freeing capacity means removing jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

GIB = 1 << 30
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class ResourceVector:
    """An amount of cpu (cores), memory (bytes) and gpu (devices).

    Floats throughout, because decayed usage history is fractional; demands and capacities that are
    whole numbers stay exact in a float up to 2**53.
    """

    cpu: float = 0.0
    memory: float = 0.0
    gpu: float = 0.0

    def __add__(self, other: ResourceVector) -> ResourceVector:
        """The sum, resource by resource."""
        return ResourceVector(self.cpu + other.cpu, self.memory + other.memory, self.gpu + other.gpu)

    def __sub__(self, other: ResourceVector) -> ResourceVector:
        """The difference, resource by resource."""
        return ResourceVector(self.cpu - other.cpu, self.memory - other.memory, self.gpu - other.gpu)

    def scale(self, factor: float) -> ResourceVector:
        """Every resource multiplied by ``factor``."""
        return ResourceVector(self.cpu * factor, self.memory * factor, self.gpu * factor)


@dataclass(frozen=True, slots=True)
class Quota:
    """A team's ceiling on concurrent use; ``None`` is unlimited. ``gpu_by_type`` caps one GPU type
    (``{"a100": 8}``) on top of the overall ``gpu`` cap."""

    cpu: float | None = None
    memory: int | None = None
    gpu: int | None = None
    gpu_by_type: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Team:
    """A team as the scheduler sees it: its fair-share weight, its quota and its usage history."""

    name: str
    weight: float = 1.0
    quota: Quota | None = None
    usage_history: ResourceVector = ResourceVector()
    """Exponentially decayed average of the team's allocation, as of ``Snapshot.now``; the leader
    keeps it with :func:`trainyard.scheduler.fairshare.accumulate`."""


@dataclass(frozen=True, slots=True)
class Worker:
    """A registered worker: its total capacity and the hard constraints a job can name."""

    id: str
    cpu: float
    memory: int
    gpu: int = 0
    gpu_type: str | None = None
    pool: str = "default"
    region: str | None = None
    spot: bool = False
    """Spot/preemptible capacity: only preemptible jobs may land here."""
    schedulable: bool = True
    """Alive and not draining; an unschedulable worker's running jobs still count as usage."""
    labels: Mapping[str, str] = field(default_factory=dict)
    cached_uris: frozenset[str] = frozenset()
    """Dataset URIs already in the worker's local cache: placement prefers such workers."""


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A job waiting to start: its demand per replica, constraints, priority and gang size."""

    id: str
    team: str
    user: str = ""
    priority: int = 1
    """Declared priority rank: 0 low, 1 normal, 2 high, 3 urgent (``Priority.rank``)."""
    queued_at: float = 0.0
    cpu: float = 1.0
    memory: int = GIB // 2
    gpu: int = 0
    gpu_type: str | None = None
    pool: str | None = None
    region: str | None = None
    require_region: bool = False
    data_uris: tuple[str, ...] = ()
    preemptible: bool = False
    replicas: int = 1
    """Gang size: per-replica demand is cpu/memory/gpu; all replicas start together or none does."""
    max_runtime_s: float = DAY_S
    attempt: int = 0
    """Fences the lease against a concurrent change of the job; passed through to the placement."""
    claimed_workers: tuple[str, ...] = ()
    """Workers where jobs were preempted for this one (``Decisions.claims``, kept by the leader
    until the job is placed): such a job is considered first, so the freed capacity is its own."""
    array_id: str | None = None
    """The array this job is a task of (None: not a task)."""
    array_limit: int | None = None
    """The array's ``parallelism``: at most this many of its tasks run at once (None: no cap). The
    running ones are the snapshot's ``RunningJob`` entries with the same ``array_id``."""


@dataclass(frozen=True, slots=True)
class RunningJob:
    """One live replica (SCHEDULED, RUNNING or CANCELLING) holding capacity on a worker.

    A gang appears as ``replicas`` entries with the same ``id`` and ranks ``replica`` 0..N-1; it is
    preempted as a whole, since losing one rank stops the others.
    """

    id: str
    team: str
    worker_id: str
    priority: int = 1
    cpu: float = 1.0
    memory: int = GIB // 2
    gpu: int = 0
    gpu_indices: tuple[int, ...] = ()
    preemptible: bool = False
    started_at: float = 0.0
    last_checkpoint_at: float | None = None
    max_runtime_s: float = DAY_S
    replica: int = 0
    terminating: bool = False
    """Already told to stop (preempted or cancelled): its capacity is about to come back, so it is
    neither a victim again nor a reason to preempt someone else."""
    array_id: str | None = None
    """The array this job is a task of: it counts against the array's ``parallelism``."""


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The scheduler's policy knobs: fair-share history, aging, preemption, reservations, soft costs."""

    half_life_s: float = 7 * DAY_S
    """Half-life of the usage history (Slurm's PriorityDecayHalfLife defaults to 7 days)."""
    history_weight: float = 0.5
    """How much decayed history counts next to current use when ordering teams."""
    aging_s_per_priority_step: float = 3600.0
    aging_cap: int = 2
    """Aging raises queue order up to this rank (high) and never grants preemption rights: a low job
    that waited long overtakes fresh normal and high jobs, but does not evict anyone."""
    preempt_min_priority: int = 2
    """Declared rank at or above which a job may preempt preemptible lower-priority jobs."""
    fair_share_reclaim: bool = True
    max_preemptions_per_cycle: int = 32
    """Evictions are expensive and arrive together; a cap turns a storm into a trickle."""
    max_preemption_attempts_per_cycle: int = 16
    """Bounds the O(workers) victim search per cycle; later jobs try again next cycle."""
    max_reservations: int = 8
    """EASY reserves for the first blocked job; a few more keep one pool's blocked job from
    hiding another pool's."""
    reserve_after_s: float = 0.0
    """A blocked job gets a reservation only after waiting this long."""
    region_cost: float = 10.0
    """Score penalty for placing outside ``data.region`` (in units of stranded GPUs)."""
    spot_preference_cost: float = 2.0
    """Penalty for a preemptible job on on-demand capacity, which it should leave to others."""
    cache_bonus: float = 4.0
    """Credit for a worker caching all of a job's ``data_uris`` (partial coverage: pro rata)."""
    termination_grace_s: float = 60.0
    """How long a preempted job is assumed to take to stop (used for ETAs and reservations)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scheduling decision depends on, the clock included."""

    now: float
    workers: tuple[Worker, ...] = ()
    pending: tuple[PendingJob, ...] = ()
    running: tuple[RunningJob, ...] = ()
    teams: tuple[Team, ...] = ()
    """Teams absent here but named by a job get weight 1 and no quota."""
    config: SchedulerConfig = SchedulerConfig()
    over_budget: Mapping[str, str] = field(default_factory=dict)
    """Teams at or over their monthly dollar budget, each with the reason its pending jobs wait
    (``team vision is over its monthly budget ($5,012 of $5,000)``). The leader computes it from
    the store every few seconds (spending moves slowly), not per cycle."""
    budget_exempt: frozenset[str] = frozenset()
    """Jobs (or arrays: every task of one) an admin let through their team's budget."""
