"""Each team's usage through one cycle: its fair-share cost, and its quotas.

A team's usage starts at what its running jobs hold and grows with every placement or claim. It is
what quotas count. Fair share counts the same usage less what is *leaving* (held by jobs preempted
this cycle, which still hold it through their grace period): that is how preempting for a job lowers
the victim's team's share at once while its quota still counts the capacity.

Teams take turns by weighted DRF, lowest :meth:`TeamLedger.cost` first (see
:mod:`trainyard.scheduler.cycle`). Quota checks return the reason a job waits, or None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trainyard.scheduler.capacity import EPS, WorkerGroup, WorkerState, replica_slots
from trainyard.scheduler.decisions import ReasonCode
from trainyard.scheduler.reasons import NEVER_FITS, amount, describe
from trainyard.scheduler.snapshot import PendingJob, ResourceVector, Team
from trainyard.scheduler.undo import UndoLog


@dataclass(slots=True, eq=False)
class TeamState:
    """One team's usage through the cycle, and what its turn in the fair-share order is based on."""

    name: str
    team: Team
    usage: list[float]
    """cpu, memory, gpu: what quotas count, preempted-but-still-running included."""
    gpus_by_type: dict[str, int]
    """GPUs in use per GPU type, for per-type quotas."""
    history_share: float
    fair_share: float
    leaving: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """Held by jobs preempted this cycle: still there for quotas, already gone for fair share."""
    changes: int = 0
    """Bumped whenever ``usage`` or ``leaving`` changes (undos included), so the fair-share order
    knows when the team's cost needs computing again."""

    def share_usage(self) -> list[float]:
        """The usage fair share counts: ``usage`` less ``leaving``."""
        return [
            self.usage[0] - self.leaving[0],
            self.usage[1] - self.leaving[1],
            self.usage[2] - self.leaving[2],
        ]


class TeamLedger:
    """Every team's :class:`TeamState`, and the arithmetic of shares and costs over the fleet."""

    def __init__(
        self, teams: dict[str, TeamState], capacity: ResourceVector, history_weight: float, undo: UndoLog
    ) -> None:
        self.teams = teams
        # dominant_share() per heap push is measurable at 10k jobs; a resource the fleet lacks
        # counts for nothing, as in dominant_share().
        self.inverse_capacity = tuple(
            1.0 / c if c > 0 else 0.0 for c in (capacity.cpu, capacity.memory, capacity.gpu)
        )
        self.history_weight = history_weight
        self.undo = undo

    def add_usage(self, team: TeamState, cpu: float, mem: float, gpu: int, gpu_type: str | None) -> None:
        """Charge a placed or claimed replica to the team (undone with the attempt, if one is open)."""
        team.changes += 1
        team.usage[0] += cpu
        team.usage[1] += mem
        team.usage[2] += gpu
        if gpu and gpu_type:
            team.gpus_by_type[gpu_type] = team.gpus_by_type.get(gpu_type, 0) + gpu
        entries = self.undo.entries
        if entries is None:
            return

        def undo() -> None:
            team.changes += 1
            team.usage[0] -= cpu
            team.usage[1] -= mem
            team.usage[2] -= gpu
            if gpu and gpu_type:
                team.gpus_by_type[gpu_type] -= gpu

        entries.append(undo)

    def share(self, usage: Sequence[float]) -> float:
        """The dominant share of the fleet that this usage (cpu, memory, gpu) amounts to."""
        inv = self.inverse_capacity
        return max(usage[0] * inv[0], usage[1] * inv[1], usage[2] * inv[2])

    def cost(self, team: TeamState) -> float:
        """The team's weighted DRF cost: (share + weighted history) / fair share. Lowest goes next."""
        # share(team.share_usage()) without the list: this runs once per visited job.
        u, gone, inv = team.usage, team.leaving, self.inverse_capacity
        share = max((u[0] - gone[0]) * inv[0], (u[1] - gone[1]) * inv[1], (u[2] - gone[2]) * inv[2])
        return (share + self.history_weight * team.history_share) / max(team.fair_share, EPS)


def budget_block(
    over_budget: Mapping[str, str], exempt: frozenset[str], job: PendingJob
) -> tuple[ReasonCode, str] | None:
    """Why the job waits for its team's monthly budget (the team is at or over it and no admin let
    the job, or its array, through), or None. Running jobs are never stopped for a budget."""
    reason = over_budget.get(job.team)
    if reason is None or job.id in exempt or (job.array_id is not None and job.array_id in exempt):
        return None
    return "budget", reason


def quota_block(team: TeamState, job: PendingJob) -> tuple[ReasonCode, str] | None:
    """Why the team's quotas stop the job (more than the quota, or the quota in use), or None."""
    quota = team.team.quota
    if quota is None:
        return None
    n = job.replicas
    gpu_type = job.gpu_type if job.gpu and job.gpu_type in quota.gpu_by_type else None
    if not gpu_type:
        # The common case, far from every limit, without building the checks below (this runs for
        # every visited job of a team with a quota): the same tests, in one expression.
        usage = team.usage
        gpu_need, cpu_need, mem_need = job.gpu * n, job.cpu * n, job.memory * n
        limit: float | None = quota.gpu
        if limit is None or (
            gpu_need <= limit + EPS and (gpu_need <= 0 or usage[2] + gpu_need <= limit + EPS)
        ):
            limit = quota.cpu
            if limit is None or (
                cpu_need <= limit + EPS and (cpu_need <= 0 or usage[0] + cpu_need <= limit + EPS)
            ):
                limit = quota.memory
                if limit is None or (
                    mem_need <= limit + EPS and (mem_need <= 0 or usage[1] + mem_need <= limit + EPS)
                ):
                    return None
    checks: list[tuple[str, float | None, float, float]] = [
        ("GPU", quota.gpu, team.usage[2], job.gpu * n),
        ("CPU", quota.cpu, team.usage[0], job.cpu * n),
        ("memory", quota.memory, team.usage[1], job.memory * n),
    ]
    if gpu_type:
        typed = (f"{gpu_type} GPU", quota.gpu_by_type[gpu_type], team.gpus_by_type.get(gpu_type, 0))
        checks.insert(0, (*typed, job.gpu * n))
    for label, limit, _, need in checks:
        if limit is not None and need > limit + EPS:
            return (
                "never-fits",
                f"needs {amount(label, need)} {label}, more than team {team.name}'s {label} quota "
                f"of {amount(label, limit)}",
            )
    for label, limit, used, need in checks:
        if limit is not None and need > 0 and used + need > limit + EPS:
            return (
                "quota",
                f"team {team.name} at {label} quota {amount(label, used)}/{amount(label, limit)}",
            )
    return None


def groups_within_type_quotas(
    team: TeamState, job: PendingJob, groups: list[WorkerGroup]
) -> tuple[list[WorkerGroup], tuple[ReasonCode, str] | None]:
    """For a GPU job that named no GPU type, in a team with per-type quotas: the groups whose type the
    quota still allows, or, when there are none, why the job waits."""
    quota = team.team.quota
    assert quota is not None
    need = job.gpu * job.replicas
    allowed: list[WorkerGroup] = []
    ever_allowed: list[WorkerGroup] = []
    block: str | None = None
    for g in groups:
        if g.max_gpu < job.gpu:
            continue
        limit = quota.gpu_by_type.get(g.gpu_type) if g.gpu_type is not None else None
        used = team.gpus_by_type.get(g.gpu_type, 0) if g.gpu_type is not None else 0
        if limit is None or need <= limit:
            ever_allowed.append(g)
        if limit is None or used + need <= limit:
            allowed.append(g)
        elif need <= limit:
            block = block or f"team {team.name} at {g.gpu_type} GPU quota {used}/{limit}"
    if not ever_allowed:
        return [], (
            "never-fits",
            f"{NEVER_FITS}needs {need} GPUs, more than team {team.name}'s quota for every GPU type that fits",
        )
    if job.replicas > 1 and replica_slots(ever_allowed, job) < job.replicas:
        return [], (
            "never-fits",
            f"{NEVER_FITS}gang of {job.replicas} replicas of {describe(job)} "
            f"within team {team.name}'s GPU type quotas",
        )
    if not allowed:
        return [], ("quota", block or "")
    return allowed, None


def gpu_type_quota_block(team: TeamState, job: PendingJob, hosts: list[WorkerState]) -> str | None:
    """Per-GPU-type quotas for a job that named no type, checked on the types these workers would
    give it: why they stop it, or None.

    Only the chosen workers are checked, so such a job may wait at a capped type although another
    type has room; naming the type avoids that.
    """
    if not job.gpu or job.gpu_type is not None:
        return None
    quota = team.team.quota
    if quota is None or not quota.gpu_by_type:
        return None
    need: dict[str, int] = {}
    for host in hosts:
        gpu_type = host.worker.gpu_type
        if gpu_type is not None:
            need[gpu_type] = need.get(gpu_type, 0) + job.gpu
    for gpu_type, n in sorted(need.items()):
        limit = quota.gpu_by_type.get(gpu_type)
        used = team.gpus_by_type.get(gpu_type, 0)
        if limit is not None and used + n > limit:
            return f"team {team.name} at {gpu_type} GPU quota {used}/{limit}"
    return None
