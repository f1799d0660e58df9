"""One scheduling cycle: the queues, the fair-share turns, and each job's way through the checks.

:func:`decide` builds a :class:`Cycle` over the snapshot and runs it. The cycle loads the snapshot
into the per-cycle state (the :class:`~.capacity.Fleet`'s free capacity, the
:class:`~.teams.TeamLedger`'s usage), orders each team's queue, and visits pending jobs one at a
time, the next from whichever team has the lowest fair-share cost. Each visit goes, in order:

1. never fits (no worker could ever hold it: :mod:`.reasons`), then its array's cap on running tasks
   (``PendingJob.array_limit``), then the team's quotas (:mod:`.teams`);
2. placed now, on the best fit (:mod:`.capacity`);
3. capacity claimed by preempting or from draining jobs (:mod:`.preemption`);
4. blocked by another job's reservation, else a reservation of its own (:mod:`.reservations`);
5. otherwise it waits for capacity.

The first step that settles the job ends the visit, and every job that does not start gets a reason.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from trainyard.scheduler.capacity import EPS, Fleet, WorkerGroup, WorkerState, fit_keys
from trainyard.scheduler.charged import RunningCharge, charged_for
from trainyard.scheduler.charged import charge_host as _charge_host
from trainyard.scheduler.decisions import Decisions, ReasonCode, placement
from trainyard.scheduler.fairshare import TeamShare, dominant_share, team_shares
from trainyard.scheduler.preemption import Preemptor
from trainyard.scheduler.reasons import capacity_reason, clock, expected_start, never_fits_reason
from trainyard.scheduler.reservations import Reservations
from trainyard.scheduler.snapshot import (
    PendingJob,
    ResourceVector,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Team,
)
from trainyard.scheduler.teams import (
    TeamLedger,
    TeamState,
    budget_block,
    gpu_type_quota_block,
    groups_within_type_quotas,
    quota_block,
)
from trainyard.scheduler.undo import UndoLog

T = TypeVar("T")

_by_id = operator.attrgetter("id")
_by_queued_at = operator.attrgetter("queued_at")
_by_replica = operator.attrgetter("replica")
_by_worker_id = operator.attrgetter("worker_id")
_by_gpu = operator.attrgetter("gpu")
_terminating = operator.attrgetter("terminating")
_claimed_workers = operator.attrgetter("claimed_workers")


def _sorted_by(items: Sequence[T], *keys: Callable[[T], Any]) -> list[T]:
    """The items sorted by the keys, most significant first (stable sorts, the last key first).

    One sort by the first key, then only each run of items that tie on it is sorted by the rest:
    within a run the first sort kept the items' input order, so that gives the same order as
    sorting everything by every key, at the price of one sort plus a few short ones (the ~10,000
    running replicas of a simulated day tie on id only within a gang: three full sorts of them
    were about a tenth of the day's time, py-spy)."""
    first = keys[0]
    out = sorted(items, key=first)
    values = list(map(first, out))
    if not all(map(operator.eq, values, values)):
        return _sorted_plain(items, keys)  # a NaN (unequal to itself) sorts unpredictably
    ties = list(map(operator.eq, values, values[1:]))
    if not any(ties):
        return out
    rest = keys[1:]
    i, n = 0, len(ties)
    # Each run of ties: out[start : end + 1] where ties[start:end] are all true.
    for start in itertools.compress(range(n), ties):
        if start < i:
            continue  # inside the run already sorted
        end = start
        while end < n and ties[end]:
            end += 1
        run = out[start : end + 1]
        for key in reversed(rest):
            run.sort(key=key)
        out[start : end + 1] = run
        i = end + 1
    return out


def _sorted_plain(items: Sequence[T], keys: tuple[Callable[[T], Any], ...]) -> list[T]:
    """The items sorted by every key in stable passes, the least significant first."""
    out = list(items)
    for key in reversed(keys):
        out.sort(key=key)
    return out


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
        with charged_for(snapshot) as charged:
            return Cycle(snapshot, charged).run()
    finally:
        if was_enabled:
            gc.enable()


@dataclass(slots=True, eq=False)
class JobShape:
    """What every job of one demand shape (constraints, per-replica demand, gang size) shares within
    a cycle. Identity is the key: memos hold the object itself."""

    groups: list[WorkerGroup]
    """The groups whose hard constraints the shape accepts."""
    never_fits: str | None
    """Why no registered worker could ever run it, or None."""
    fits_nowhere: bool = False
    """No worker in ``groups`` fits even one replica, reservations aside. Free capacity only shrinks
    within a cycle, so this stays true once found."""
    capacity_reasons: dict[int, str] = field(default_factory=dict)
    """The "waiting for capacity" texts, by the largest free GPU count they name (-1: none)."""
    start_key: int = 0
    octave_key: int = 0
    """The shape's keys in a group's bucket index (``capacity.fit_keys``)."""
    ranked: dict[str | None, list[tuple[float, WorkerGroup, bool, bool]]] = field(default_factory=dict)
    """``groups`` ranked by their fixed soft cost (``Fleet.ranked``), by the job's preferred region
    (the shape fixes the rest): what best fit starts from, without a look-up keyed by a tuple."""
    failed: set[object] = field(default_factory=set)
    """Jobs of the shape that found no room this cycle, by max runtime (with the team, as a tuple,
    where a per-type quota makes success depend on it): free capacity only shrinks, so a later job
    of the same kind skips the search. On the shape, so a visit builds no key tuple to look it up."""


class Cycle:
    """One run of the scheduler over one snapshot; :meth:`run` returns its decisions."""

    def __init__(self, snapshot: Snapshot, charged: RunningCharge | None = None) -> None:
        """``charged``: the snapshot's running replicas already charged (:mod:`.charged`), or None
        to charge them here."""
        self.snapshot = snapshot
        self.config = config = snapshot.config
        self.now = now = snapshot.now
        self.decisions = decisions = Decisions()
        self.undo = undo = UndoLog()
        if charged is None:
            self.fleet = fleet = Fleet(snapshot.workers, config, now, undo)
            self.shares = team_shares(snapshot, usage=False)  # usage: charged below
        else:
            self.fleet = fleet = Fleet(snapshot.workers, config, now, undo, charged.templates)
            self.shares = team_shares(
                snapshot, usage=False, running_counts=charged.counts, capacity=charged.capacity
            )
        self.ledger = TeamLedger(self._team_states(), fleet.capacity, config.history_weight, undo)
        self.teams = self.ledger.teams
        if charged is None:
            running = self._charge_running_jobs()
            gangs = None
        else:
            running = []
            gangs = charged.gangs()
            self._charge_kept(charged)
        self.preemptor = Preemptor(fleet, self.ledger, running, config, now, decisions, undo, gangs)
        fleet.index_all()
        self.reservations = Reservations(fleet, config, now, decisions.reservations, self.preemptor.doomed)
        self.shapes: dict[tuple[object, ...], JobShape] = {}
        self.visited = decisions.order.append
        self.subsets: dict[tuple[int, ...], list[WorkerGroup]] = {}
        """The per-type quota subsets of groups met so far (keyed by the fleet's groups, which live
        through the cycle)."""
        self.over_budget = snapshot.over_budget
        self.array_running: dict[str, int] | None = None
        """Live tasks per array, the cycle's placements included (counted when first needed)."""

    # --- loading the snapshot ------------------------------------------------------------------

    def _team_states(self) -> dict[str, TeamState]:
        """A state per team that has a share: configured teams, and any that only have jobs."""
        configured = {t.name: t for t in self.snapshot.teams}
        teams: dict[str, TeamState] = {}
        for name, share in self.shares.items():
            team = configured.get(name, Team(name))
            teams[name] = TeamState(name, team, [0.0, 0.0, 0.0], {}, share.history_share, share.fair_share)
        return teams

    def _charge_running_jobs(self) -> list[RunningJob]:
        """Charge every running job to its team and its worker; returns the running replicas by
        (id, replica, worker)."""
        # By (id, replica, worker), in stable passes.
        running = _sorted_by(self.snapshot.running, _by_id, _by_replica, _by_worker_id)
        self._charge_teams(running)
        hosts = self.fleet.workers
        draining = self.fleet.draining
        for r in filter(_terminating, running):
            if r.worker_id in hosts:
                draining[r.worker_id] = None  # in the order first found, as _fit_on_draining tries them
        # Each worker's replicas, in the running order: a worker's state is charged in one go, in
        # locals (the same subtractions in the same order as one replica at a time).
        on: dict[str, list[RunningJob]] = {}
        for r in running:
            wid = r.worker_id
            mine = on.get(wid)
            if mine is None:
                on[wid] = [r]
            else:
                mine.append(r)
        for wid, replicas in on.items():
            host = hosts.get(wid)
            if host is not None:  # else a lost or draining worker: its use still counts for the team
                _charge_host(host, replicas)
        return running

    def _charge_kept(self, charged: RunningCharge) -> None:
        """What ``_charge_running_jobs`` does, from the kept charge: the workers come charged (see
        ``Fleet``), the teams' usage and the draining workers are copied."""
        teams = self.teams
        if charged.exact and not self._typed_teams():
            for name, usage in charged.usage.items():
                teams[name].usage = list(usage)
        else:
            self._charge_teams(_sorted_by(self.snapshot.running, _by_id, _by_replica, _by_worker_id))
        draining = self.fleet.draining
        for wid in charged.draining():
            draining[wid] = None

    def _typed_teams(self) -> dict[str, dict[str, int]]:
        """The GPUs by type of every team with a per-type quota (only those read them)."""
        return {
            name: team.gpus_by_type
            for name, team in self.teams.items()
            if team.team.quota is not None and team.team.quota.gpu_by_type
        }

    def _charge_teams(self, running: list[RunningJob]) -> None:
        """Each team's usage, summed in the running order, and its GPUs by type where a per-type
        quota reads them (others never do)."""
        teams, gpu_type_of = self.teams, self.fleet.gpu_type_of
        usages = {name: team.usage for name, team in teams.items()}
        for r in running:
            usage = usages[r.team]
            usage[0] += r.cpu
            usage[1] += r.memory
            usage[2] += r.gpu
        typed = self._typed_teams()
        if not typed:
            return  # only a per-type quota reads ``gpus_by_type`` (teams.py)
        for r in filter(_by_gpu, running):
            by_type = typed.get(r.team)
            gpu_type = gpu_type_of.get(r.worker_id)
            if by_type is not None and gpu_type:
                by_type[gpu_type] = by_type.get(gpu_type, 0) + r.gpu

    # --- the cycle -----------------------------------------------------------------------------

    def run(self) -> Decisions:
        """Visit every pending job, claimants first, and return the decisions."""
        first, rest = self._queues()
        self._fair_pass(first)
        self._fair_pass(rest)
        self.decisions.shares = self._final_shares()
        return self.decisions

    def _queues(self) -> tuple[dict[str, list[PendingJob]], dict[str, list[PendingJob]]]:
        """Each team's queue, in order, split into jobs holding a claim and the rest.

        Jobs holding a claim from an earlier preemption go first: the capacity was freed for them,
        and letting whoever comes first in fair-share order (often the requeued victim) take it
        would make the claimant evict again, forever."""
        queues: dict[str, list[PendingJob]] = {}
        for job in self.snapshot.pending:
            # Not setdefault(team, []): that makes (and drops) an empty list per pending job.
            queue = queues.get(job.team)
            if queue is None:
                queues[job.team] = [job]
            else:
                queue.append(job)
        first: dict[str, list[PendingJob]] = {}
        rest: dict[str, list[PendingJob]] = {}
        now, step, cap = self.now, self.config.aging_s_per_priority_step, self.config.aging_cap
        position = self.decisions.queue_position
        for name in sorted(queues):
            queue = queues[name]
            # By (-effective priority, queued_at, id): stable sorts, least significant key first,
            # compare scalars, which is quicker than comparing tuples.
            queue = _sorted_by(queue, _by_queued_at, _by_id)
            # -effective_priority() of each job, inlined, and the last pass sorts positions by it
            # with a C key function: a Python key function per pending job costs more. So do the
            # builtin max() and min(), which parse keyword arguments on every call: each is spelt
            # out as the comparison it makes (max(a, b) is b only if b > a; min(a, b), b if b < a).
            if step <= 0:
                ranks = [-j.priority for j in queue]
            else:
                ranks = []
                rank = ranks.append
                for j in queue:
                    p = j.priority
                    waited = now - j.queued_at
                    raised = p + int((0.0 if waited < 0.0 else waited) // step)
                    if cap < raised:
                        raised = cap
                    rank(-(raised if raised > p else p))
            queue = list(map(queue.__getitem__, sorted(range(len(queue)), key=ranks.__getitem__)))
            position.update(zip(map(_by_id, queue), range(1, len(queue) + 1), strict=True))
            claimed = list(filter(_claimed_workers, queue))
            if claimed:
                first[name] = claimed
                queue = [j for j in queue if not j.claimed_workers]
            if queue:
                rest[name] = queue
        return first, rest

    def _fair_pass(self, queues: dict[str, list[PendingJob]]) -> None:
        """Visit every queued job, the next from whichever team has the lowest weighted cost."""
        # Each entry: (cost, team name, its state, its queue, its ``changes`` when costed). Names
        # are unique, so a tie on cost never compares further.
        heap: list[tuple[float, str, TeamState, list[PendingJob], int]] = []
        visit, cost, teams = self._visit, self.ledger.cost, self.teams
        inv, history_weight = self.ledger.inverse_capacity, self.ledger.history_weight
        for name, queue in queues.items():
            queue.reverse()  # pop() from the end is O(1)
            team = teams[name]
            heap.append((cost(team), name, team, queue, team.changes))
        heapq.heapify(heap)
        while heap:
            _, name, team, queue, costed = heap[0]
            pop = queue.pop
            while True:
                visit(pop(), team)
                if not queue:
                    heapq.heappop(heap)
                    break
                changes = team.changes
                if changes != costed:
                    # TeamLedger.cost(team), inlined (the same floats): once per placement.
                    # and max() spelt out (see _queues)
                    u, gone = team.usage, team.leaving
                    share = (u[0] - gone[0]) * inv[0]
                    dominant = (u[1] - gone[1]) * inv[1]
                    if dominant > share:
                        share = dominant
                    dominant = (u[2] - gone[2]) * inv[2]
                    if dominant > share:
                        share = dominant
                    fair_share = team.fair_share
                    team_cost = (share + history_weight * team.history_share) / (
                        EPS if fair_share < EPS else fair_share
                    )
                    heapq.heapreplace(heap, (team_cost, name, team, queue, changes))
                    break
                # else its cost is the one in its entry, which is still the smallest: it goes
                # again, without a look at the heap

    def _final_shares(self) -> dict[str, TeamShare]:
        """Each team's share after the cycle's placements and preemptions."""
        out: dict[str, TeamShare] = {}
        for name, before in self.shares.items():
            usage = ResourceVector(*self.teams[name].share_usage())
            out[name] = TeamShare(
                team=name,
                weight=before.weight,
                usage=usage,
                share=dominant_share(usage, self.fleet.capacity),
                history_share=before.history_share,
                fair_share=before.fair_share,
                pending=before.pending,
                running=before.running,
            )
        return out

    def _waits(self, job: PendingJob, code: ReasonCode, text: str) -> None:
        self.decisions.reasons[job.id] = text
        self.decisions.reason_codes[job.id] = code

    def _visit(self, job: PendingJob, team: TeamState) -> None:
        """Place the job (of this team), claim capacity for it, or say why it waits (see the module
        docstring)."""
        self.visited(job.id)
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
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = self._shape(job)
        # "Never" before "quota": waiting for the team's own jobs to finish would not help.
        if shape.never_fits is not None:
            self._waits(job, "never-fits", shape.never_fits)
            return
        if self.over_budget:
            held = budget_block(self.over_budget, self.snapshot.budget_exempt, job)
            if held is not None:
                self._waits(job, *held)
                return
        if job.array_limit is not None and self._array_full(job):
            self._waits(
                job,
                "array-limit",
                f"array limit: array {job.array_id} runs at most {job.array_limit} of its tasks at once",
            )
            return
        quota = team.team.quota
        if quota is not None:
            blocked = quota_block(team, job)
            if blocked is not None:
                self._waits(job, *blocked)
                return
        groups = shape.groups
        typed_quota = gpu > 0 and job.gpu_type is None and quota is not None and bool(quota.gpu_by_type)
        # A per-type quota makes success depend on the team, not just the shape.
        failed_key: object = (job.max_runtime_s, job.team) if typed_quota else job.max_runtime_s
        if typed_quota:
            groups, blocked = groups_within_type_quotas(team, job, groups)
            if blocked is not None:
                self._waits(job, *blocked)
                return
            # One list per distinct subset, so the memos keyed by the groups list hit again.
            groups = self.subsets.setdefault(tuple(map(id, groups)), groups)
        # ``fits_nowhere`` speaks for the shape's own groups only, not for a per-type quota's subset.
        fits_nowhere = shape.fits_nowhere and groups is shape.groups
        failed = shape.failed
        if failed_key not in failed:
            if not fits_nowhere:
                placed, type_quota = self._place_now(job, team, groups, shape)
                if placed:
                    return
                if type_quota is not None:
                    self._waits(job, "quota", type_quota)
                    return
                if job.replicas == 1 and not self.decisions.reservations and groups is shape.groups:
                    shape.fits_nowhere = fits_nowhere = True  # no reservation was in the way
            failed.add(failed_key)
        self._wait_for_capacity(job, shape, groups, fits_nowhere)

    def _array_full(self, job: PendingJob) -> bool:
        """Whether the job's array already runs as many tasks as its ``parallelism`` allows."""
        running = self.array_running
        if running is None:
            running = self.array_running = {}
            for r in self.snapshot.running:
                if r.array_id is not None:
                    running[r.array_id] = running.get(r.array_id, 0) + 1
        return running.get(job.array_id or "", 0) >= (job.array_limit or 0)

    def _placed_task(self, job: PendingJob) -> None:
        """A task of an array was placed, or holds capacity it starts on (preempted or reserved for
        it): one slot of its array less for the rest of the cycle."""
        if job.array_limit is not None and job.array_id is not None:
            self._array_full(job)  # counts the running ones first
            assert self.array_running is not None
            self.array_running[job.array_id] = self.array_running.get(job.array_id, 0) + 1

    def _wait_for_capacity(
        self, job: PendingJob, shape: JobShape, groups: list[WorkerGroup], fits_nowhere: bool
    ) -> None:
        """The job does not fit now: preempt or drain for it, or reserve for it, or let it wait."""
        preempting = self.preemptor.try_preempt(job, groups)
        if preempting is not None:
            self._waits(job, *preempting)
            if job.array_id is not None:
                self._placed_task(job)  # the capacity freed is for it: it takes its array's slot
            return
        holder = self._reserved_by(job, groups, shape, fits_nowhere)
        if holder is not None:
            self._waits(
                job,
                "reserved",
                f"capacity it fits is reserved for {holder} from "
                f"{clock(self.reservations.start_of(holder), self.now)}; its max_runtime ends later",
            )
            return
        why = capacity_reason(self.fleet, shape.capacity_reasons, groups, job)
        reservation = self.reservations.try_reserve(job, groups)
        if reservation is not None:
            if job.array_id is not None:
                self._placed_task(job)  # it starts first when capacity frees: its array's slot
            self._waits(
                job,
                "reservation",
                f"{why}; holds a reservation on {len(reservation.worker_ids)} worker(s), "
                f"expected to start {expected_start(reservation.start_at, self.now)}",
            )
            return
        self._waits(job, "capacity", why)

    def _shape(self, job: PendingJob) -> JobShape:
        constraints = (
            job.pool,
            job.gpu_type if job.gpu else None,
            job.gpu > 0,
            job.preemptible,
            (job.region,) if job.require_region else None,
        )
        groups = self.fleet.groups_for(constraints, job)
        start_key, octave_key = fit_keys(job.cpu, job.gpu)
        return JobShape(
            groups, never_fits_reason(self.fleet, groups, job), start_key=start_key, octave_key=octave_key
        )

    def _place_now(
        self, job: PendingJob, team: TeamState, groups: list[WorkerGroup], shape: JobShape
    ) -> tuple[bool, str | None]:
        """Start every replica of the job (of this shape) now if they all fit: (placed, the
        per-GPU-type quota that stopped it, if that is why not)."""
        if job.replicas > 1:
            return self._place_gang(job, team, groups)
        # The common case needs no undo log: nothing changes unless the job is placed.
        fleet = self.fleet
        # self._ranked(), inlined: once per placement.
        ranked = shape.ranked.get(job.region) if groups is shape.groups else None
        if ranked is None:
            ranked = self._ranked(job, groups, shape)
        host = fleet.fit(job, ranked, shape.start_key, shape.octave_key)
        if host is None:
            return False, None
        gpu = job.gpu
        if gpu and job.gpu_type is None:  # only then can a per-type quota stop it here
            type_quota = gpu_type_quota_block(team, job, [host])
            if type_quota is not None:
                return False, type_quota
        w = host.worker
        gpus = fleet.allocate(host, job)
        if self.undo.entries is None:
            # TeamLedger.add_usage(), inlined (no attempt is open, so there is nothing to undo):
            # once per placement, the same additions in the same order.
            team.changes += 1
            usage = team.usage
            usage[0] += job.cpu
            usage[1] += job.memory
            usage[2] += gpu
            gpu_type = w.gpu_type
            if gpu and gpu_type:
                by_type = team.gpus_by_type
                by_type[gpu_type] = by_type.get(gpu_type, 0) + gpu
        else:
            self.ledger.add_usage(team, job.cpu, job.memory, gpu, w.gpu_type)
        cross = job.region is not None and w.region != job.region
        decisions = self.decisions
        decisions.cross_region += cross
        decisions.placements.append(placement(job.id, w.id, gpus, 0, 1, job.attempt, cross))
        if job.array_id is not None:
            self._placed_task(job)
        return True, None

    def _ranked(
        self, job: PendingJob, groups: list[WorkerGroup], shape: JobShape
    ) -> list[tuple[float, WorkerGroup, bool, bool]]:
        """``Fleet.ranked(job, groups)``, from the shape's own memo where these are its groups."""
        if groups is not shape.groups:
            return self.fleet.ranked(job, groups)  # a per-type quota's subset
        ranked = shape.ranked.get(job.region)
        if ranked is None:
            ranked = shape.ranked[job.region] = self.fleet.ranked(job, groups)
        return ranked

    def _place_gang(
        self, job: PendingJob, team: TeamState, groups: list[WorkerGroup]
    ) -> tuple[bool, str | None]:
        """All replicas or none: allocate one by one within an attempt, roll back if any fails."""
        fleet, undo = self.fleet, self.undo
        chosen: list[tuple[WorkerState, tuple[int, ...]]] = []
        undo.begin()
        for _ in range(job.replicas):
            host = fleet.best_fit(job, groups)
            if host is None:
                undo.rollback()
                return False, None
            chosen.append((host, fleet.allocate(host, job)))
        type_quota = gpu_type_quota_block(team, job, [host for host, _ in chosen])
        if type_quota is not None:
            undo.rollback()
            return False, type_quota
        undo.commit()
        decisions = self.decisions
        for rank, (host, gpus) in enumerate(chosen):
            self.ledger.add_usage(team, job.cpu, job.memory, job.gpu, host.worker.gpu_type)
            cross = job.region is not None and host.worker.region != job.region
            decisions.cross_region += cross
            decisions.placements.append(
                placement(job.id, host.worker.id, gpus, rank, job.replicas, job.attempt, cross)
            )
        if job.array_id is not None:
            self._placed_task(job)
        return True, None

    def _reserved_by(
        self, job: PendingJob, groups: list[WorkerGroup], shape: JobShape, fits_nowhere: bool
    ) -> str | None:
        """The job whose reservation holds the capacity this job would fit in now, if any."""
        if not self.decisions.reservations or fits_nowhere:
            return None
        ranked = self._ranked(job, groups, shape)
        host = self.fleet.fit(job, ranked, shape.start_key, shape.octave_key, use_reservations=False)
        if host is None:
            if groups is shape.groups:
                shape.fits_nowhere = True
            return None
        return host.reservation.job_id if host.reservation is not None else None
