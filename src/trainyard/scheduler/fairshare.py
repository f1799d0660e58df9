"""Weighted Dominant Resource Fairness with a decayed usage history.

A team's *share* is its dominant share: the largest fraction of the cluster's cpu, memory or gpu it
holds (Ghodsi et al., DRF). Its *fair share* is its weight over the weights of the teams that want
something (pending or running work), so an idle team's share is lent to the others. Ordering uses
share plus a decayed history (as Slurm's multifactor priority does), so a team that just ran a lot
yields to one that did not; preemption decisions use current share only, because history cannot be
given back by evicting anyone.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from trainyard.scheduler.snapshot import ResourceVector, Snapshot, Team

_by_team = operator.attrgetter("team")


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    """What remains of usage after ``elapsed_s`` with this half-life (0 with none: no memory)."""
    if half_life_s <= 0:
        return 0.0
    return math.pow(0.5, max(elapsed_s, 0.0) / half_life_s)


def decay(usage: ResourceVector, elapsed_s: float, half_life_s: float) -> ResourceVector:
    """``usage`` after ``elapsed_s`` of exponential decay with the given half-life."""
    return usage.scale(decay_factor(elapsed_s, half_life_s))


def accumulate(
    history: ResourceVector, current: ResourceVector, elapsed_s: float, half_life_s: float
) -> ResourceVector:
    """Advance an exponentially weighted average of allocation by ``elapsed_s`` at ``current`` use.

    The leader calls this each cycle per team. The result stays in allocation units (cores, bytes,
    GPUs), so it compares directly with current use: a team that held 8 GPUs for many half-lives
    has a history of 8 GPUs.
    """
    f = decay_factor(elapsed_s, half_life_s)
    return history.scale(f) + current.scale(1.0 - f)


def dominant_share(usage: ResourceVector, capacity: ResourceVector) -> float:
    """The largest fraction of the capacity the usage takes in any resource (DRF's dominant share);
    a resource the capacity lacks counts for nothing."""
    share = 0.0
    if capacity.cpu > 0:
        share = usage.cpu / capacity.cpu
    if capacity.memory > 0:
        share = max(share, usage.memory / capacity.memory)
    if capacity.gpu > 0:
        share = max(share, usage.gpu / capacity.gpu)
    return share


def fair_shares(weights: Mapping[str, float], active: Iterable[str]) -> dict[str, float]:
    """Each active team's entitlement: weight over the active teams' total weight."""
    names = sorted(set(active))
    total = sum(max(weights.get(n, 1.0), 0.0) for n in names)
    if total <= 0:
        return {n: 1.0 / len(names) for n in names} if names else {}
    return {n: max(weights.get(n, 1.0), 0.0) / total for n in names}


@dataclass(frozen=True, slots=True)
class TeamShare:
    """One team's standing, for ``GET /v1/queues`` and the UI."""

    team: str
    weight: float
    usage: ResourceVector
    share: float
    """Dominant share of current use."""
    history_share: float
    """Dominant share of the decayed usage history."""
    fair_share: float
    """Entitlement among the teams with demand; 0 for a team with none."""
    pending: int
    running: int

    @property
    def over_share(self) -> bool:
        """Whether the team uses more than its fair share now."""
        return self.share > self.fair_share + 1e-9


def capacity_of(snapshot: Snapshot) -> ResourceVector:
    """The total capacity of the snapshot's schedulable workers."""
    cpu = mem = gpu = 0.0
    for w in snapshot.workers:
        if w.schedulable:
            cpu += w.cpu
            mem += w.memory
            gpu += w.gpu
    return ResourceVector(cpu, mem, gpu)


def team_shares(
    snapshot: Snapshot,
    *,
    usage: bool = True,
    running_counts: Mapping[str, int] | None = None,
    capacity: ResourceVector | None = None,
) -> dict[str, TeamShare]:
    """Share against fair share for every team that is configured or has work.

    With ``usage=False`` the running jobs are only counted, not summed: every ``usage`` and
    ``share`` is zero (a scheduling cycle charges the running jobs itself, in its own order, and
    summing them here too was about 6 % of a simulated day at ~10,000 running, py-spy). With it,
    ``running_counts`` (each team with running replicas: how many) and ``capacity``
    (``capacity_of(snapshot)``) may come worked out already."""
    teams: dict[str, Team] = {t.name: t for t in snapshot.teams}
    totals: dict[str, list[float]] = {}
    running: dict[str, int] = {}
    if usage:
        for r in snapshot.running:
            acc = totals.setdefault(r.team, [0.0, 0.0, 0.0])
            acc[0] += r.cpu
            acc[1] += r.memory
            acc[2] += r.gpu
            running[r.team] = running.get(r.team, 0) + 1
    elif running_counts is not None:
        running = dict(running_counts)
    else:
        running = Counter(map(_by_team, snapshot.running))
    pending = Counter(map(_by_team, snapshot.pending))
    names = sorted(set(teams) | set(running) | set(pending))
    if capacity is None:
        capacity = capacity_of(snapshot)
    fair = fair_shares({n: teams[n].weight for n in teams}, set(running) | set(pending))
    out: dict[str, TeamShare] = {}
    for n in names:
        t = teams.get(n, Team(n))
        u = ResourceVector(*totals.get(n, (0.0, 0.0, 0.0)))
        out[n] = TeamShare(
            team=n,
            weight=t.weight,
            usage=u,
            share=dominant_share(u, capacity),
            history_share=dominant_share(t.usage_history, capacity),
            fair_share=fair.get(n, 0.0),
            pending=pending.get(n, 0),
            running=running.get(n, 0),
        )
    return out
