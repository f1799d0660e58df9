"""A discrete-event simulator that drives a scheduling policy over a workload.

The policy is any pure ``Snapshot -> Decisions`` function: the real scheduler
(:func:`trainyard.scheduler.core.decide`) or the FIFO baseline (:func:`trainyard.scheduler.fifo.
decide_fifo`). The simulator plays the leader loop and the fleet around it: it builds a snapshot
each cycle as the leader does (claims kept until placed, a decayed usage history per team), applies
placements (a gang's replicas together), gives preempted jobs ``termination_grace_s`` to stop and
requeues them, and takes spot workers away and back.

Time only moves by events, kept in one heap: arrivals, completions, checkpoints, the end of a
victim's grace period, spot reclaims and returns, and scheduler cycles. A cycle runs when
something changed since the last one, but at most once per ``cycle_s`` simulated seconds: at 100k
jobs a day something changes every second, and each cycle costs a ``decide``.

Work and loss: a job needs ``runtime_s`` of running. A job with ``checkpoint_s`` saves progress
every ``checkpoint_s`` of an attempt; a preempted attempt keeps what it last saved and loses the
rest, grace period included (the GPUs are held, the work is discarded). Each attempt may run at
most ``max_runtime_s`` (then the job is timed out, as the platform does).

Fairness: Jain's index over teams of (GPU-seconds received / GPU-seconds entitled), per window of
``fairness_window_s``, averaged over the windows. Only teams *backlogged* in the window are compared
(for at least ``backlog_fraction`` of it, a GPU job of theirs had waited over ``backlog_wait_s``):
a team that asked for little and got all of it is not a victim of unfairness, and at 100k jobs a
day every team always has some job waiting for the next cycle, so merely pending is not enough.
The entitlement splits what the backlogged teams received between them by weight (water-filling:
weighted max-min, each team capped at its GPU quota, so a quota that binds is not counted as
unfair). So the index judges how the contested GPUs were divided, not how many there were: idle or
stranded GPUs are the utilization figure's business. 1.0 is perfectly weighted-fair; 1/n means one
team got everything.

Everything here is pure: no clock, no I/O, no randomness (the workload carries all of it), so a
run is reproducible and unit-testable. A caller that wants to time the policy passes ``timer``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from trainyard.model.pricing import Cost, Usage, attempt_cost
from trainyard.scheduler.core import Decisions
from trainyard.scheduler.fairshare import accumulate
from trainyard.scheduler.sim_results import (
    EPS,
    GroupStats,
    Series,
    SimConfig,
    SimResult,
    SimulationError,
    entitlements,
    jain_index,
    percentile,
)
from trainyard.scheduler.snapshot import (
    PendingJob,
    ResourceVector,
    RunningJob,
    Snapshot,
    Team,
    Worker,
)
from trainyard.scheduler.workload import PRIORITY_NAMES, JobArrival, Workload

Policy = Callable[[Snapshot], Decisions]

# The report's types and measures live in sim_results.py; they stay importable from here.
__all__ = [
    "EPS",
    "GroupStats",
    "Policy",
    "Series",
    "SimConfig",
    "SimResult",
    "SimulationError",
    "entitlements",
    "jain_index",
    "percentile",
    "simulate",
]

# Event kinds; the number also orders events at one instant: capacity comes back before the
# worker leaves, reclaims before arrivals, and the cycle last so it sees all of them.
_FINISH = 0
_STOP = 1
_CHECKPOINT = 2
_GONE = 3
_RECLAIM = 4
_RETURN = 5
_ARRIVAL = 6
_CYCLE = 9


# --- the simulation ------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Job:
    a: JobArrival
    done_s: float = 0.0
    attempt: int = 0
    start: float | None = None
    """Start of the current attempt, while running."""
    first_start: float | None = None
    terminating: bool = False
    preempt_at: float = 0.0
    finished: bool = False
    timed_out: bool = False
    preemptions: int = 0
    lost_gpu_s: float = 0.0
    cost: Cost = field(default_factory=Cost)
    """What its ended attempts cost (``SimConfig.prices``)."""


@dataclass(slots=True, eq=False)
class _Host:
    """A worker's allocation, tracked independently of the policy to catch over-allocation."""

    w: Worker
    present: bool = True
    reclaim: int | None = None
    cpu: float = 0.0
    mem: float = 0.0
    gpus: set[int] = field(default_factory=set)


def checkpointed(r: RunningJob, at: float) -> RunningJob:
    """``replace(r, last_checkpoint_at=at)``, spelt out: a third of the time (every preemptible
    replica checkpoints every few minutes of a simulated day)."""
    return RunningJob(
        r.id,
        r.team,
        r.worker_id,
        r.priority,
        r.cpu,
        r.memory,
        r.gpu,
        r.gpu_indices,
        r.preemptible,
        r.started_at,
        at,
        r.max_runtime_s,
        r.replica,
        r.terminating,
        r.array_id,
    )


class _Sim:
    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        name: str,
        config: SimConfig,
        timer: Callable[[], float] | None,
    ) -> None:
        self.wl = workload
        self.policy = policy
        self.name = name
        self.cfg = config
        self.sched = config.scheduler
        self.timer = timer
        self.policy_s = 0.0
        self.heap: list[tuple[float, int, int, tuple[str, int]]] = []
        self.seq = 0
        self.now = min([0.0, *(j.submit_s for j in workload.jobs)])
        self.jobs: dict[str, _Job] = {}
        self.hosts: dict[str, _Host] = {}
        for w in sorted(workload.workers, key=lambda w: w.id):
            if w.id in self.hosts:
                raise SimulationError(f"duplicate worker id {w.id}")
            self.hosts[w.id] = _Host(w)
        self.workers_t: tuple[Worker, ...] = tuple(h.w for h in self.hosts.values())
        self.teams = {t.name: t for t in workload.teams}
        for j in workload.jobs:
            if j.team not in self.teams:
                self.teams[j.team] = Team(j.team)
        self.team_names = sorted(self.teams)
        self.history: dict[str, ResourceVector] = {}
        self.history_at: float | None = None
        self.pending: dict[str, PendingJob] = {}
        self.claims: dict[str, tuple[str, ...]] = {}
        self.running: dict[tuple[str, int], RunningJob] = {}
        self.usage: dict[str, list[float]] = {n: [0.0, 0.0, 0.0] for n in self.team_names}
        self.prio_gpu = [0] * len(PRIORITY_NAMES)
        self.pending_gpu_jobs: dict[str, int] = dict.fromkeys(self.team_names, 0)
        # Each team's GPU jobs in the order they entered the queue (the clock only moves forward),
        # with stale entries dropped lazily from the front: the oldest waiting one in O(1).
        self.gpu_queue: dict[str, deque[tuple[float, str, int]]] = {n: deque() for n in self.team_names}
        self.gpu_used = 0
        self.running_jobs = 0
        self.capacity_gpu = sum(w.gpu for w in self.workers_t)
        self.workers_on = len(self.workers_t)
        """Workers present or booting: what the fleet costs (``worker_s``)."""
        self.workers_started = 0
        self.changed = False
        self.cycle_at: float | None = None
        self.last_cycle = -math.inf
        self.cycles = 0
        self.events = 0
        self.preempt_reasons: dict[str, int] = {}
        # integrals
        self.end = workload.horizon_s if workload.horizon_s is not None else config.max_time_s
        self.t_int = 0.0
        self.cap_s = 0.0
        self.used_s = 0.0
        self.running_s = 0.0
        self.worker_s = 0.0
        self.team_gpu_s = dict.fromkeys(self.team_names, 0.0)
        self.prio_gpu_s = [0.0] * len(PRIORITY_NAMES)
        n_win = max(1, math.ceil(self.end / config.fairness_window_s)) if math.isfinite(self.end) else 1
        self.win_cap = [0.0] * n_win
        self.win_gpu: list[dict[str, float]] = [dict.fromkeys(self.team_names, 0.0) for _ in range(n_win)]
        self.win_backlog: list[dict[str, float]] = [dict.fromkeys(self.team_names, 0.0) for _ in range(n_win)]
        self.s_t: list[float] = []
        self.s_queue: list[int] = []
        self.s_running: list[int] = []
        self.s_util: list[float] = []
        self.s_share: dict[str, list[float]] = {n: [] for n in self.team_names}
        self.next_sample = 0.0
        self.max_queue = 0

    # --- events ---

    def push(self, t: float, kind: int, ref: tuple[str, int]) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, kind, self.seq, ref))

    def run(self) -> SimResult:
        for a in self.wl.jobs:
            if a.id in self.jobs:
                raise SimulationError(f"duplicate job id {a.id}")
            self.jobs[a.id] = _Job(a)
            self.push(a.submit_s, _ARRIVAL, (a.id, 0))
        for i, r in enumerate(self.wl.reclaims):
            if r.worker_id not in self.hosts:
                raise SimulationError(f"reclaim of unknown worker {r.worker_id}")
            self.push(r.at_s, _RECLAIM, ("", i))
        heap = self.heap
        end = self.end
        final = end if self.wl.horizon_s is not None else None
        while heap:
            t, kind, _, (key, n) = heapq.heappop(heap)
            if t > end:
                final = end
                break
            self.events += 1
            if kind != _CHECKPOINT:  # the one frequent event that changes nothing integrated
                self.advance(t)
            self.now = t
            if kind == _CYCLE:
                self.cycle()
                continue
            if kind == _ARRIVAL:
                j = self.jobs[key]
                self.enqueue(j, j.a.submit_s)
            elif kind == _FINISH:
                self.finish(self.jobs[key], n)
            elif kind == _STOP:
                self.stop(self.jobs[key], n)
            elif kind == _CHECKPOINT:
                self.checkpoint(self.jobs[key], n)
            elif kind == _RECLAIM:
                self.reclaim(n)
            elif kind == _GONE:
                self.gone(key)
            elif kind == _RETURN:
                self.give_back(key, n)
            else:
                self.on_event(kind, key, n)
            if self.changed and self.cycle_at is None:
                self.cycle_at = max(t, self.last_cycle + self.cfg.cycle_s)
                self.push(self.cycle_at, _CYCLE, ("", 0))
        if final is None:
            final = max(self.now, 0.0)  # no horizon: the run ends when the last event has happened
        self.advance(final)
        return self.result(final)

    def enqueue(self, j: _Job, at: float) -> None:
        a = j.a
        self.pending[a.id] = PendingJob(
            a.id,
            a.team,
            priority=a.priority,
            queued_at=at,
            cpu=a.cpu,
            memory=a.memory,
            gpu=a.gpu,
            gpu_type=a.gpu_type,
            pool=a.pool,
            preemptible=a.preemptible,
            replicas=a.replicas,
            max_runtime_s=a.max_runtime_s,
            attempt=j.attempt,
        )
        if a.gpu:
            self.pending_gpu_jobs[a.team] += 1
            self.gpu_queue[a.team].append((at, a.id, j.attempt))
        if self.now >= 0:  # yesterday's carried-over work all arrives before t=0
            self.max_queue = max(self.max_queue, len(self.pending))
        self.changed = True

    def dequeue(self, a: JobArrival) -> None:
        del self.pending[a.id]
        self.claims.pop(a.id, None)
        if a.gpu:
            self.pending_gpu_jobs[a.team] -= 1

    def cycle(self) -> None:
        self.cycle_at = None
        self.changed = False
        if not self.pending:
            self.after_cycle(None, None)
            return  # as the leader: nothing to decide, and no cycle spent
        self.last_cycle = self.now
        self.cycles += 1
        pending = tuple(self.pending.values())
        snap = Snapshot(
            now=self.now,
            workers=self.workers_t,
            pending=pending,
            running=tuple(self.running.values()),
            teams=self.team_snapshot(),
            config=self.sched,
        )
        if self.timer is not None:
            t0 = self.timer()
            decisions = self.policy(snap)
            self.policy_s += self.timer() - t0
        else:
            decisions = self.policy(snap)
        self.apply(decisions)
        self.after_cycle(snap, decisions)

    # Hooks for a subclass that changes the fleet (the autoscaler): no-ops here.

    def after_cycle(self, snapshot: Snapshot | None, decisions: Decisions | None) -> None:
        """A cycle has decided over ``snapshot`` (None: nothing pending, no cycle was needed)."""

    def on_event(self, kind: int, key: str, n: int) -> None:
        """An event of a kind this class does not know."""
        raise SimulationError(f"unknown event kind {kind}")

    def freed(self, worker_id: str) -> None:
        """A replica left ``worker_id``."""

    def team_snapshot(self) -> tuple[Team, ...]:
        # The leader's bookkeeping: advance each team's decayed history by the time since the last
        # cycle at its current use (see Platform._scheduling_teams).
        elapsed = self.now - self.history_at if self.history_at is not None else 0.0
        self.history_at = self.now
        out = []
        for n in self.team_names:
            u = self.usage[n]
            h = accumulate(
                self.history.get(n, ResourceVector()), ResourceVector(*u), elapsed, self.sched.half_life_s
            )
            self.history[n] = h
            out.append(replace(self.teams[n], usage_history=h))
        return tuple(out)

    def apply(self, d: Decisions) -> None:
        by_job: dict[str, list[tuple[str, tuple[int, ...], int]]] = {}
        for pl in d.placements:
            by_job.setdefault(pl.job_id, []).append((pl.worker_id, pl.gpu_indices, pl.rank))
        for job_id, reps in by_job.items():
            self.place(job_id, reps)
        for pr in d.preemptions:
            j = self.jobs.get(pr.job_id)
            if j is None or j.start is None or j.terminating:
                continue
            self.preempt(j, pr.reason)
        if d.claims or self.claims:
            merged = {**self.claims, **d.claims}
            self.claims = {k: v for k, v in merged.items() if k in self.pending}
            for k, v in self.claims.items():
                p = self.pending[k]
                if p.claimed_workers != v:
                    self.pending[k] = replace(p, claimed_workers=v)

    def place(self, job_id: str, reps: list[tuple[str, tuple[int, ...], int]]) -> None:
        j = self.jobs.get(job_id)
        if j is None or job_id not in self.pending:
            raise SimulationError(f"{self.name} placed {job_id}, which is not pending")
        a = j.a
        if len(reps) != a.replicas or sorted(r for _, _, r in reps) != list(range(a.replicas)):
            raise SimulationError(f"{self.name} placed {len(reps)} of {a.replicas} replicas of gang {job_id}")
        self.dequeue(a)
        t = self.now
        for wid, gpus, rank in reps:
            h = self.hosts.get(wid)
            if h is None or not h.present or not h.w.schedulable:
                raise SimulationError(f"{self.name} placed {job_id} on unavailable worker {wid}")
            w = h.w
            if (a.pool is not None and w.pool != a.pool) or (
                a.gpu and a.gpu_type and w.gpu_type != a.gpu_type
            ):
                raise SimulationError(f"{self.name} placed {job_id} on {wid} against its pool or GPU type")
            if w.spot and not a.preemptible:
                raise SimulationError(f"{self.name} placed non-preemptible {job_id} on spot worker {wid}")
            if (
                len(gpus) != a.gpu
                or len(set(gpus)) != a.gpu
                or any(g in h.gpus or not 0 <= g < w.gpu for g in gpus)
            ):
                raise SimulationError(
                    f"{self.name} gave {job_id} GPUs {gpus} on {wid}, held: {sorted(h.gpus)}"
                )
            h.cpu += a.cpu
            h.mem += a.memory
            if h.cpu > w.cpu + EPS or h.mem > w.memory:
                raise SimulationError(f"{self.name} over-allocated {wid} placing {job_id}")
            h.gpus.update(gpus)
            self.running[(job_id, rank)] = RunningJob(
                job_id,
                a.team,
                wid,
                priority=a.priority,
                cpu=a.cpu,
                memory=a.memory,
                gpu=a.gpu,
                gpu_indices=gpus,
                preemptible=a.preemptible,
                started_at=t,
                last_checkpoint_at=None,
                max_runtime_s=a.max_runtime_s,
                replica=rank,
            )
        self.add_usage(a, 1)
        j.start = t
        if j.first_start is None:
            j.first_start = t
        left = a.runtime_s - j.done_s
        self.push(t + min(left, a.max_runtime_s), _FINISH, (job_id, j.attempt))
        if a.checkpoint_s is not None and a.preemptible and a.checkpoint_s < left:
            # Victim choice looks at the last checkpoint; only preemptible jobs can be victims.
            self.push(t + a.checkpoint_s, _CHECKPOINT, (job_id, j.attempt))

    def add_usage(self, a: JobArrival, sign: int) -> None:
        n = a.replicas * sign
        u = self.usage[a.team]
        u[0] += a.cpu * n
        u[1] += a.memory * n
        u[2] += a.gpu * n
        self.gpu_used += a.gpu * n
        self.prio_gpu[a.priority] += a.gpu * n
        self.running_jobs += sign

    def replicas(self, j: _Job) -> list[tuple[str, int]]:
        return [(j.a.id, r) for r in range(j.a.replicas)]

    def preempt(self, j: _Job, reason: str) -> None:
        j.terminating = True
        j.preempt_at = self.now
        j.preemptions += 1
        self.preempt_reasons[reason] = self.preempt_reasons.get(reason, 0) + 1
        for key in self.replicas(j):
            self.running[key] = replace(self.running[key], terminating=True)
        self.push(self.now + self.sched.termination_grace_s, _STOP, (j.a.id, j.attempt))

    def charge(self, j: _Job, until: float) -> Cost:
        """What the current attempt of ``j`` costs from its start to ``until``, within the run."""
        prices = self.cfg.prices
        if prices is None or j.start is None:
            return Cost()
        a = j.a
        ms = round((min(until, self.end) - max(j.start, 0.0)) * 1000)
        if ms <= 0:
            return Cost()
        total = Cost()
        for key in self.replicas(j):
            w = self.hosts[self.running[key].worker_id].w
            usage = Usage(ms, a.gpu, w.gpu_type if a.gpu else None, a.cpu, a.memory, w.spot)
            total += attempt_cost(prices, usage)
        return total

    def release(self, j: _Job) -> None:
        a = j.a
        j.cost += self.charge(j, self.now)
        for key in self.replicas(j):
            r = self.running.pop(key)
            h = self.hosts[r.worker_id]
            h.cpu -= r.cpu
            h.mem -= r.memory
            h.gpus.difference_update(r.gpu_indices)
            self.freed(r.worker_id)
        self.add_usage(a, -1)
        j.start = None
        j.terminating = False
        self.changed = True

    def finish(self, j: _Job, attempt: int) -> None:
        if j.attempt != attempt or j.start is None:
            return  # a stale completion of an attempt that was preempted
        a = j.a
        ran = self.now - j.start
        if j.done_s + ran + EPS >= a.runtime_s:
            j.finished = True
        else:
            j.timed_out = True  # ran out its max_runtime before its work was done
        j.done_s += ran
        self.release(j)

    def saved_at(self, j: _Job, t: float) -> float:
        """When the current attempt last checkpointed at or before ``t`` (its start if never)."""
        assert j.start is not None
        c = j.a.checkpoint_s
        if c is None:
            return j.start
        return j.start + math.floor((t - j.start) / c + EPS) * c

    def checkpoint(self, j: _Job, attempt: int) -> None:
        if j.attempt != attempt or j.start is None or j.terminating:
            return
        running, now = self.running, self.now
        for key in self.replicas(j):
            running[key] = checkpointed(running[key], now)
        c = j.a.checkpoint_s
        assert c is not None
        if self.now + c < j.start + j.a.runtime_s - j.done_s:
            self.push(self.now + c, _CHECKPOINT, (j.a.id, attempt))

    def stop(self, j: _Job, attempt: int) -> None:
        if j.attempt != attempt or j.start is None:
            return  # it finished during its grace period
        a = j.a
        saved = self.saved_at(j, j.preempt_at)
        lost = self.now - saved
        j.lost_gpu_s += lost * a.gpu * a.replicas
        j.done_s += saved - j.start
        self.release(j)
        j.attempt += 1
        self.enqueue(j, self.now)

    def reclaim(self, idx: int) -> None:
        r = self.wl.reclaims[idx]
        h = self.hosts[r.worker_id]
        if not h.present or h.reclaim is not None:
            return  # already gone: the cloud cannot take it twice
        h.reclaim = idx
        h.w = replace(h.w, schedulable=False)
        self.rebuild_workers()
        victims = {key[0] for key, rj in self.running.items() if rj.worker_id == r.worker_id}
        for job_id in sorted(victims):
            j = self.jobs[job_id]
            if not j.terminating:
                self.preempt(j, "spot reclaim")
        self.changed = True
        self.push(self.now + self.sched.termination_grace_s, _GONE, (r.worker_id, 0))
        self.push(self.now + max(r.duration_s, self.sched.termination_grace_s), _RETURN, (r.worker_id, idx))

    def gone(self, wid: str) -> None:
        h = self.hosts[wid]
        if h.cpu > EPS or h.gpus:
            raise SimulationError(f"worker {wid} left with jobs still on it")
        h.present = False
        self.capacity_gpu -= h.w.gpu
        self.workers_on -= 1
        self.rebuild_workers()

    def give_back(self, wid: str, idx: int) -> None:
        h = self.hosts[wid]
        if h.reclaim != idx:
            return
        h.reclaim = None
        h.present = True
        h.w = replace(h.w, schedulable=True)
        self.capacity_gpu += h.w.gpu
        self.workers_on += 1
        self.rebuild_workers()
        self.changed = True

    def rebuild_workers(self) -> None:
        self.workers_t = tuple(h.w for h in self.hosts.values() if h.present)

    # --- integrals and samples ---

    def advance(self, t: float) -> None:
        """Integrate the state held since the last event up to ``t`` (clipped to [0, end])."""
        t = min(t, self.end)
        if t <= self.t_int:
            return
        lo = max(self.t_int, 0.0)
        self.t_int = t
        if t <= 0.0:
            return
        while self.next_sample <= t and self.next_sample <= self.end:
            self.sample(self.next_sample)
            self.next_sample += self.cfg.sample_s
        win = self.cfg.fairness_window_s
        while lo < t:
            w = min(int(lo // win), len(self.win_cap) - 1)
            hi = min(t, (w + 1) * win) if w < len(self.win_cap) - 1 else t
            dt = hi - lo
            self.cap_s += self.capacity_gpu * dt
            self.used_s += self.gpu_used * dt
            self.running_s += self.running_jobs * dt
            self.worker_s += self.workers_on * dt
            self.win_cap[w] += self.capacity_gpu * dt
            wg = self.win_gpu[w]
            wb = self.win_backlog[w]
            for n in self.team_names:
                g = self.usage[n][2] * dt
                self.team_gpu_s[n] += g
                wg[n] += g
                if self.pending_gpu_jobs[n]:
                    waited_from = self.oldest_gpu_wait(n) + self.cfg.backlog_wait_s
                    if waited_from < hi:
                        wb[n] += hi - max(lo, waited_from)
            for p, g in enumerate(self.prio_gpu):
                self.prio_gpu_s[p] += g * dt
            lo = hi

    def oldest_gpu_wait(self, team: str) -> float:
        q = self.gpu_queue[team]
        while q:
            at, job_id, attempt = q[0]
            p = self.pending.get(job_id)
            if p is not None and p.attempt == attempt:
                return at
            q.popleft()
        return math.inf

    def sample(self, t: float) -> None:
        cap = self.capacity_gpu
        self.s_t.append(t)
        self.s_queue.append(len(self.pending))
        self.s_running.append(self.running_jobs)
        self.s_util.append(self.gpu_used / cap if cap else 0.0)
        for n in self.team_names:
            self.s_share[n].append(self.usage[n][2] / cap if cap else 0.0)

    # --- results ---

    def result(self, end: float) -> SimResult:
        end = max(end, 0.0)
        cap_s = self.cap_s
        team_jobs: dict[str, list[_Job]] = {n: [] for n in self.team_names}
        prio_jobs: list[list[_Job]] = [[] for _ in PRIORITY_NAMES]
        for j in self.jobs.values():
            j.cost += self.charge(j, end)  # still running at the end: paid for up to it
            team_jobs[j.a.team].append(j)
            prio_jobs[j.a.priority].append(j)
        teams = tuple(
            self.group(n, team_jobs[n], self.team_gpu_s[n], self.teams[n].weight) for n in self.team_names
        )
        prios = tuple(
            self.group(PRIORITY_NAMES[p], prio_jobs[p], self.prio_gpu_s[p], None)
            for p in range(len(PRIORITY_NAMES))
            if prio_jobs[p]
        )
        everyone = self.group("all", list(self.jobs.values()), self.used_s, None)
        jain, windows = self.fairness()
        return SimResult(
            policy=self.name,
            workload=self.wl.name,
            end_s=end,
            cycles=self.cycles,
            events=self.events,
            overall=everyone,
            teams=teams,
            priorities=prios,
            gpu_utilization=self.used_s / cap_s if cap_s else 0.0,
            jain_index=jain,
            jain_windows=windows,
            preemptions_by_reason=dict(sorted(self.preempt_reasons.items())),
            mean_running=self.running_s / end if end else 0.0,
            max_queue_depth=self.max_queue,
            series=Series(
                tuple(self.s_t),
                tuple(self.s_queue),
                tuple(self.s_running),
                tuple(self.s_util),
                {n: tuple(v) for n, v in self.s_share.items()},
            ),
            policy_s=self.policy_s,
            worker_hours=self.worker_s / 3600,
            workers_started=self.workers_started,
        )

    def group(self, name: str, jobs: list[_Job], gpu_s: float, weight: float | None) -> GroupStats:
        end = self.t_int
        waits: list[float] = []
        counted = started = finished = timed_out = never = preemptions = 0
        lost_gpu_s = 0.0
        cost = Cost()
        for j in jobs:
            cost += j.cost
            preemptions += j.preemptions
            lost_gpu_s += j.lost_gpu_s
            if j.a.submit_s < 0 or j.a.submit_s > end:
                continue  # carried over from before the run, or not yet submitted at its end
            counted += 1
            finished += j.finished
            timed_out += j.timed_out
            if j.first_start is not None:
                started += 1
                waits.append(j.first_start - j.a.submit_s)
            else:
                never += 1
                waits.append(end - j.a.submit_s)
        waits.sort()
        return GroupStats(
            name=name,
            jobs=counted,
            started=started,
            finished=finished,
            timed_out=timed_out,
            wait_p50_s=percentile(waits, 50),
            wait_p95_s=percentile(waits, 95),
            wait_p99_s=percentile(waits, 99),
            never_started=never,
            gpu_hours=gpu_s / 3600,
            gpu_share=gpu_s / self.cap_s if self.cap_s else 0.0,
            preemptions=preemptions,
            gpu_hours_lost=lost_gpu_s / 3600,
            weight=weight,
            cost=cost,
        )

    def fairness(self) -> tuple[float | None, int]:
        win = self.cfg.fairness_window_s
        values: list[float] = []
        for w, cap in enumerate(self.win_cap):
            span = min(win, max(self.t_int - w * win, 0.0))
            if span <= 0 or cap <= 0:
                continue
            backlogged = [
                n for n in self.team_names if self.win_backlog[w][n] >= self.cfg.backlog_fraction * span
            ]
            if len(backlogged) < 2:
                continue
            received = sum(self.win_gpu[w][n] for n in backlogged)
            weights = {n: self.teams[n].weight for n in backlogged}
            caps: dict[str, float] = {}
            for n in backlogged:
                q = self.teams[n].quota
                if q is not None and q.gpu is not None:
                    caps[n] = q.gpu * span
            ent = entitlements(received, weights, caps)
            xs = [self.win_gpu[w][n] / ent[n] for n in backlogged if ent[n] > EPS]
            if len(xs) >= 2:
                values.append(jain_index(xs))
        if not values:
            return None, 0
        return sum(values) / len(values), len(values)


def simulate(
    workload: Workload,
    policy: Policy,
    *,
    name: str = "scheduler",
    config: SimConfig = SimConfig(),
    timer: Callable[[], float] | None = None,
) -> SimResult:
    """Run ``policy`` over ``workload`` and measure what happened to every job and team."""
    if config.cycle_s <= 0 or config.sample_s <= 0 or config.fairness_window_s <= 0:
        raise ValueError("cycle_s, sample_s and fairness_window_s must be positive")
    return _Sim(workload, policy, name, config, timer).run()
