"""Fair-share arithmetic and the ETA estimator."""

from __future__ import annotations

import math

from tests.unit.scheduler.helpers import NOW, gpu_node, job, run, snap
from trainyard.scheduler.eta import estimate_starts
from trainyard.scheduler.fairshare import accumulate, decay, dominant_share, fair_shares, team_shares
from trainyard.scheduler.snapshot import ResourceVector, SchedulerConfig, Team


def test_decay_halves_per_half_life() -> None:
    u = ResourceVector(8, 100, 4)
    assert decay(u, 3600, 3600) == ResourceVector(4, 50, 2)
    assert decay(u, 0, 3600) == u
    assert decay(u, 10, 0) == ResourceVector(0, 0, 0)


def test_history_converges_to_steady_use() -> None:
    h = ResourceVector()
    for _ in range(50):
        h = accumulate(h, ResourceVector(0, 0, 8), 3600, 3600)
    assert math.isclose(h.gpu, 8, rel_tol=1e-9)


def test_dominant_share_is_the_largest_fraction() -> None:
    cap = ResourceVector(100, 1000, 10)
    assert dominant_share(ResourceVector(10, 50, 5), cap) == 0.5
    assert dominant_share(ResourceVector(50, 0, 0), cap) == 0.5
    assert dominant_share(ResourceVector(1, 1, 1), ResourceVector(0, 0, 0)) == 0.0


def test_fair_share_only_among_teams_with_demand() -> None:
    assert fair_shares({"a": 2, "b": 1, "idle": 5}, ["a", "b"]) == {"a": 2 / 3, "b": 1 / 3}
    assert fair_shares({}, ["x", "y"]) == {"x": 0.5, "y": 0.5}


def test_team_shares_for_the_queues_endpoint() -> None:
    s = snap(
        [gpu_node("w", 8)],
        [job("p", "b", gpu=1)],
        [run("r", "w", "a", gpus=(0, 1, 2, 3))],
        [Team("a", 3.0, usage_history=ResourceVector(0, 0, 2))],
    )
    shares = team_shares(s)
    assert shares["a"].share == 0.5 and shares["a"].history_share == 0.25
    assert shares["a"].fair_share == 0.75 and not shares["a"].over_share
    assert shares["b"].pending == 1 and shares["a"].running == 1


def test_eta_follows_running_jobs_to_their_bound() -> None:
    s = snap(
        [gpu_node("w", 4)],
        [job("now", gpu=1), job("after-a", gpu=3, age=5), job("after-b", gpu=4, age=1, runtime=600)],
        [run("a", "w", gpus=(0, 1, 2), started_ago=0, runtime=1000)],
    )
    e = estimate_starts(s, min_step_s=0)
    assert e.start_at["now"] == NOW
    assert e.start_at["after-a"] == NOW + 1000
    assert e.start_at["after-b"] == NOW + 1000 + 3600  # behind after-a (older), which runs 1h


def test_eta_is_bounded_and_says_when_it_does_not_know() -> None:
    s = snap(
        [gpu_node("w", 1)],
        [job(f"j{i}", gpu=1, age=100 - i) for i in range(10)],
        config=SchedulerConfig(),
    )
    e = estimate_starts(s, max_steps=3, min_step_s=0)
    known = [j for j, t in e.start_at.items() if t is not None]
    assert known == ["j0", "j1", "j2", "j3"]
    assert e.start_at["j9"] is None and e.steps == 3
    assert estimate_starts(s, max_jobs=2).start_at["j5"] is None
