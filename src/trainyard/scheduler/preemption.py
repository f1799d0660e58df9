"""Preemption: free capacity for a pending job by evicting running ones, or wait for draining ones.

A job that does not fit may take capacity from others: a job of at least ``preempt_min_priority``
evicts preemptible lower-priority jobs, and a team under its fair share evicts preemptible jobs of
teams over theirs (only while the victim's team stays at least as far over as the claimant will be,
so two teams cannot take capacity back and forth). Capacity still held by jobs already told to stop
(*draining*) is used first.

Victims are found by simulating their removal, one worker at a time, cheapest loss first (lowest
priority, least work since a checkpoint, shortest run), so nobody is evicted unless the job then
fits. The job is not placed in the same cycle: the victims hold the capacity through their grace
period, so it is *claimed* for the job (``Decisions.claims``), and the job starts once they are gone.
The work is bounded per cycle by ``max_preemption_attempts_per_cycle`` and
``max_preemptions_per_cycle``.
"""

from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from trainyard.scheduler.capacity import EPS, Fleet, WorkerGroup, WorkerState, groups_key
from trainyard.scheduler.decisions import Decisions, Preemption, PreemptReason, ReasonCode
from trainyard.scheduler.snapshot import PendingJob, RunningJob, SchedulerConfig
from trainyard.scheduler.teams import TeamLedger, TeamState, gpu_type_quota_block
from trainyard.scheduler.undo import Undo, UndoLog

VictimCost = tuple[int, float, float, int, str]
"""Worst priority, lost work, lost runtime, replicas, worker id: the lowest wins."""
Victims = list[tuple[RunningJob, PreemptReason]]

_by_id = operator.attrgetter("id")


@dataclass(slots=True)
class _Rights:
    """What a pending job may do to get capacity, worked out before any victim is searched."""

    by_priority: bool
    """Its priority lets it evict lower-priority jobs."""
    reclaim: bool
    """Its team stays within its fair share once it runs: it may evict over-share teams' jobs."""
    claimant_cost: float
    """Its team's fair-share cost once it runs."""
    budget: int
    """Preemptions left this cycle."""
    no_victims_key: tuple[object, ...]


class _SortedGangs(dict[str, list[RunningJob]]):
    """Each running job's replicas, cut from the running replicas (sorted by id, replica, worker)
    when first asked for: only victims' are, a few hundred of ~10,000 in a cold cycle, where
    grouping them all was about 1 % of it (py-spy)."""

    __slots__ = ("running",)

    def __init__(self, running: list[RunningJob]) -> None:
        super().__init__()
        self.running = running

    def __missing__(self, job_id: str) -> list[RunningJob]:
        running = self.running
        start = bisect_left(running, job_id, key=_by_id)
        gang = running[start : bisect_right(running, job_id, lo=start, key=_by_id)]
        self[job_id] = gang
        return gang


class Preemptor:
    """Finds capacity for jobs that do not fit, by draining capacity or by evicting victims.

    ``running`` is every running replica, by (id, replica, worker). ``doomed`` (shared with the
    reservations) holds the ids of running jobs preempted this cycle."""

    def __init__(
        self,
        fleet: Fleet,
        ledger: TeamLedger,
        running: list[RunningJob],
        config: SchedulerConfig,
        now: float,
        decisions: Decisions,
        undo: UndoLog,
        gangs: dict[str, list[RunningJob]] | None = None,
    ) -> None:
        self.fleet = fleet
        self.ledger = ledger
        self.running = running
        self.gangs: dict[str, list[RunningJob]] = {}
        """Each running job's replicas, filled with the losses below: only a victim's are asked for."""
        self.given_gangs = gangs
        """The gangs as a mapping that works each one out when asked (:class:`.charged.Gangs`), in
        place of grouping ``running``."""
        self.config = config
        self.now = now
        self.decisions = decisions
        self.undo = undo
        self.doomed: set[str] = set()
        self.attempts = 0
        self.no_victims: set[tuple[object, ...]] = set()
        """Demands (shape, priority, team) that found no victims: victims only get scarcer."""
        self.weighed = False
        self.losses: dict[int, tuple[int, float, float, str]] = {}
        """``loss()`` of every victim weighed so far, by the victim's ``id()`` (the snapshot keeps
        each alive): the victim search weighs the same victims for every worker it tries, attempt
        after attempt. A worker's victims are weighed, and sorted by it, when a victim search first
        looks at them (``_weigh_host``): many cycles search none, and a search looks only at the
        workers of the job's groups."""
        self.weighed_groups: list[WorkerGroup] = []
        """Groups whose workers' victims are weighed and sorted this cycle (a few: a list)."""

    def _weigh_victims(self) -> None:
        """Group the running replicas by job (at the cycle's first victim search)."""
        if self.given_gangs is not None:
            self.gangs = self.given_gangs
        else:
            self.gangs = _SortedGangs(self.running)

    def _weigh_host(self, host: WorkerState) -> list[RunningJob]:
        """Work out the loss of each of the worker's victims and sort them by it, cheapest first (the
        same order whenever it is done in the cycle: losses only depend on the snapshot)."""
        victims = host.victims
        losses, now = self.losses, self.now
        for r in victims:
            # loss(), inlined: once per preemptible running replica looked at, every cycle with a
            # search.
            checkpoint = r.last_checkpoint_at
            since = now - (checkpoint if checkpoint is not None else r.started_at)
            losses[id(r)] = (r.priority, since, now - r.started_at, r.id)
        if len(victims) > 1:
            # A new list: a kept charge (.charged) shares the worker's list with later cycles.
            host.victims = victims = sorted(victims, key=lambda v: losses[id(v)])
        return victims

    def loss(self, r: RunningJob) -> tuple[int, float, float, str]:
        """What preempting the job loses, cheapest first: priority, work since a checkpoint, runtime."""
        since = self.now - (r.last_checkpoint_at if r.last_checkpoint_at is not None else r.started_at)
        return (r.priority, since, self.now - r.started_at, r.id)

    def try_preempt(self, job: PendingJob, groups: list[WorkerGroup]) -> tuple[ReasonCode, str] | None:
        """Claim capacity for every replica of the job, preempting if it must and may; the reason it
        now waits, or None if nothing was claimed (and nothing changed)."""
        config = self.config
        held = bool(job.claimed_workers)
        out_of_budget = (
            self.attempts >= config.max_preemption_attempts_per_cycle
            or len(self.decisions.preemptions) >= config.max_preemptions_per_cycle
        )
        if out_of_budget and not (held and self.fleet.draining):
            return None  # the common case once the budget is spent: keep it cheap
        team = self.ledger.teams[job.team]
        rights = self._rights(job, team, held)
        if rights is None:
            return None
        fleet, undo = self.fleet, self.undo
        undo.begin()
        claimed: list[WorkerState] = []
        victims: Victims = []
        drained = False
        for _ in range(job.replicas):
            host = fleet.best_fit(job, groups)
            if host is None:
                host = self._fit_on_draining(job, groups)
                drained = drained or host is not None
            if host is None and rights.budget - len(victims) > 0 and (rights.by_priority or rights.reclaim):
                found = self._cheapest_victims(job, groups, rights)
                if found is not None:
                    host, chosen = found
                    for victim, why in chosen:
                        self._doom(victim)
                        victims.append((victim, why))
            if host is None or len(victims) > rights.budget:
                undo.rollback()
                if host is None:
                    self.no_victims.add(rights.no_victims_key)
                return None
            fleet.claim(host, job)
            claimed.append(host)
        if gpu_type_quota_block(team, job, claimed) is not None or not (victims or drained):
            undo.rollback()
            return None
        undo.commit()
        return self._announce(job, team, claimed, victims)

    def _rights(self, job: PendingJob, team: TeamState, held: bool) -> _Rights | None:
        """Whether the job may try to preempt now, and with which rights; counts the attempt."""
        config = self.config
        by_priority = job.priority >= config.preempt_min_priority
        mine = team.share_usage()
        after = [mine[0] + job.cpu * job.replicas, mine[1] + job.memory * job.replicas]
        after.append(mine[2] + job.gpu * job.replicas)
        claimant_after = self.ledger.share(after)
        reclaim = config.fair_share_reclaim and claimant_after <= team.fair_share + EPS
        if not (by_priority or reclaim or held):
            return None
        if self.attempts >= config.max_preemption_attempts_per_cycle and not held:
            return None
        # Victims only get scarcer within a cycle, so a demand that found none will not find any
        # for the next job of the same shape, priority and team either.
        key = (groups_key(job), job.priority if by_priority else None, job.team if reclaim else None)
        if key in self.no_victims and not held:
            return None
        self.attempts += 1
        claimant_cost = claimant_after / max(team.fair_share, EPS)
        budget = config.max_preemptions_per_cycle - len(self.decisions.preemptions)
        return _Rights(by_priority, reclaim, claimant_cost, budget, key)

    def _announce(
        self, job: PendingJob, team: TeamState, claimed: list[WorkerState], victims: Victims
    ) -> tuple[ReasonCode, str]:
        """Charge the committed claim to the team, record preemptions and claims, say why it waits."""
        for host in claimed:
            self.ledger.add_usage(team, job.cpu, job.memory, job.gpu, host.worker.gpu_type)
        for victim, why in victims:
            workers = tuple(sorted({r.worker_id for r in self.gangs[victim.id]}))
            self.decisions.preemptions.append(Preemption(victim.id, workers, why, job.id))
        ids = tuple(sorted({host.worker.id for host in claimed}))
        self.decisions.claims[job.id] = ids
        if victims:
            kinds = sorted({why for _, why in victims})
            return (
                "preempting",
                f"preempting {len(victims)} job(s) ({', '.join(kinds)}) to start on {', '.join(ids)}",
            )
        return "draining", f"waiting for preempted jobs to stop on {', '.join(ids)}"

    def _fit_on_draining(self, job: PendingJob, groups: list[WorkerGroup]) -> WorkerState | None:
        """A worker where one replica fits in free plus draining capacity, and that drains some."""
        fleet = self.fleet
        for wid in fleet.draining:
            host = fleet.workers[wid]
            if (
                fleet.group_of[wid] in groups
                and host.reservation is None
                and host.free_cpu + host.draining_cpu + EPS >= job.cpu
                and host.free_memory + host.draining_memory >= job.memory
                and len(host.free_gpus) + len(host.draining_gpus) >= job.gpu
                and (host.draining_cpu > EPS or host.draining_gpus)
            ):
                return host
        return None

    def _cheapest_victims(
        self, job: PendingJob, groups: list[WorkerGroup], rights: _Rights
    ) -> tuple[WorkerState, Victims] | None:
        """The worker whose cheapest sufficient set of victims costs least, and those victims."""
        best: tuple[VictimCost, WorkerState, Victims] | None = None
        share = self.ledger.share
        over = {
            name
            for name, team in self.ledger.teams.items()
            if name != job.team and share(team.share_usage()) > team.fair_share + EPS
        }
        if not rights.by_priority and not over:
            return None
        verdicts: dict[str, PreemptReason | None] = {}
        if not self.weighed:
            self.weighed = True
            self._weigh_victims()
        losses, gangs, weighed = self.losses, self.gangs, self.weighed_groups
        # Victims are sorted by priority first, so victims[0] has the lowest: a worker whose lowest
        # is above the best cost's (highest) priority cannot win, and with no team over its share,
        # one whose lowest is not below the job's has nobody to evict.
        floor = job.priority if not over else None
        for group in groups:
            if group.max_gpu < job.gpu:
                continue
            # The first search through a group weighs every member it looks at (the loop below has
            # no early exit, and a worker it skips for a reservation keeps it all cycle), so later
            # searches through it check nothing per worker.
            fresh = group not in weighed
            if fresh:
                weighed.append(group)
            for host in group.members:
                victims = host.victims
                if not victims or host.reservation is not None:
                    continue
                if fresh:
                    victims = self._weigh_host(host)
                lowest = victims[0].priority
                if (best is not None and lowest > best[0][0]) or (floor is not None and lowest >= floor):
                    continue
                total = host.victims_total  # an upper bound: doomed victims are never added back
                if (
                    host.free_cpu + host.draining_cpu + total[0] + EPS < job.cpu
                    or host.free_memory + host.draining_memory + total[1] < job.memory
                    or len(host.free_gpus) + len(host.draining_gpus) + total[2] < job.gpu
                ):
                    continue
                chosen = self._victims_on(host, job, verdicts, rights, over)
                if chosen is None:
                    continue
                # max() and sum()s of the victims' losses, in one pass and the same order.
                worst: int | None = None
                lost_work: float = 0
                lost_runtime: float = 0
                size = 0
                for v, _ in chosen:
                    k = losses[id(v)]
                    if worst is None or k[0] > worst:
                        worst = k[0]
                    lost_work += k[1]
                    lost_runtime += k[2]
                    size += len(gangs[v.id])
                assert worst is not None  # a victim set is never empty
                cost = (worst, lost_work, lost_runtime, size, host.worker.id)
                if best is None or cost < best[0]:
                    best = (cost, host, chosen)
        return None if best is None else (best[1], best[2])

    def _victims_on(
        self,
        host: WorkerState,
        job: PendingJob,
        verdicts: dict[str, PreemptReason | None],
        rights: _Rights,
        over: set[str],
    ) -> Victims | None:
        """The fewest cheap victims on this worker whose removal lets one replica fit, or None.

        ``verdicts`` caches, per running job, whether and why it may be preempted for this job."""
        cpu = host.free_cpu + host.draining_cpu
        mem = host.free_memory + host.draining_memory
        gpu = float(len(host.free_gpus) + len(host.draining_gpus))
        picked: Victims = []
        for v in host.victims:
            why: PreemptReason | None
            if v.id in verdicts:
                why = verdicts[v.id]
            else:
                why = None
                if v.id in self.doomed or v.id == job.id:
                    pass
                elif rights.by_priority and v.priority < job.priority:
                    why = "priority"
                elif v.team in over and self._reclaimable(v, rights.claimant_cost):
                    why = "fair-share reclaim"
                verdicts[v.id] = why
            if why is None:
                continue
            picked.append((v, why))
            freed = host.victim_frees[v.id]
            cpu += freed[0]
            mem += freed[1]
            gpu += freed[2]
            if cpu + EPS >= job.cpu and mem >= job.memory and gpu >= job.gpu:
                break
        else:
            return None
        # Greedy by cheapness can pick small victims a later big one made unnecessary: drop those.
        for i in range(len(picked) - 2, -1, -1):
            c, m, g = host.victim_frees[picked[i][0].id]
            if cpu - c + EPS >= job.cpu and mem - m >= job.memory and gpu - g >= job.gpu:
                cpu -= c
                mem -= m
                gpu -= g
                del picked[i]
        return picked

    def _reclaimable(self, v: RunningJob, claimant_cost: float) -> bool:
        """The victim's team is over its share and stays at least as far over as the claimant will
        be after placing, so the two teams cannot take the capacity back and forth."""
        team = self.ledger.teams[v.team]
        mine = team.share_usage()
        gang = self.gangs[v.id]
        after = self.ledger.share(
            (
                mine[0] - sum(r.cpu for r in gang),
                mine[1] - sum(r.memory for r in gang),
                mine[2] - sum(r.gpu for r in gang),
            )
        )
        return after / max(team.fair_share, EPS) >= claimant_cost - EPS

    def _doom(self, v: RunningJob) -> None:
        """Preempt the job within the open attempt: its capacity drains, its team's share drops."""
        doomed, fleet, record = self.doomed, self.fleet, self.undo.record
        victim_id = v.id
        doomed.add(victim_id)
        record(lambda: doomed.discard(victim_id))
        team = self.ledger.teams[v.team]
        saved = list(team.leaving)

        def undo() -> None:
            team.changes += 1
            team.leaving = saved

        record(undo)
        team.changes += 1
        for r in self.gangs[v.id]:
            team.leaving = [team.leaving[0] + r.cpu, team.leaving[1] + r.memory, team.leaving[2] + r.gpu]
            host = fleet.workers.get(r.worker_id)
            if host is None:
                continue
            record(fleet.undo_point(host))
            host.doom_count += 1  # not undone: a rollback only costs the reservation timeline a rebuild
            fleet.timeline_version += 1
            host.draining_cpu += r.cpu
            host.draining_memory += r.memory
            host.draining_gpus = host.draining_gpus + list(r.gpu_indices)
            if host.worker.id not in fleet.draining:
                fleet.draining[host.worker.id] = None
                record(_undrain(fleet.draining, host.worker.id))


def _undrain(draining: dict[str, None], worker_id: str) -> Undo:
    """How to take the worker off the draining list again."""

    def undo() -> None:
        draining.pop(worker_id, None)

    return undo
