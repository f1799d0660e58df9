"""Scheduler v2: one table row per policy, each a snapshot and the decisions it must produce."""

from __future__ import annotations

import random
from dataclasses import replace

from tests.unit.scheduler.helpers import NOW, decide_on, gpu_node, job, node, run, snap, team, where
from trainyard.scheduler.core import decide, effective_priority
from trainyard.scheduler.snapshot import GIB, Quota, ResourceVector, SchedulerConfig, Team

# --- quotas ----------------------------------------------------------------------------------


def test_gpu_quota_is_never_exceeded_and_says_so() -> None:
    d = decide_on(
        [gpu_node("a", 16)],
        [job("v", "vision", gpu=2), job("n", "nlp", gpu=2)],
        [run(f"r{i}", "a", "vision", gpus=(i,)) for i in range(4)],
        [team("vision", gpu=4)],
    )
    assert where(d) == {"n": "a"}
    assert d.reasons["v"] == "team vision at GPU quota 4/4"
    assert d.reason_codes["v"] == "quota"


def test_quota_smaller_than_the_job_is_never_fits() -> None:
    d = decide_on([gpu_node("a")], [job("big", gpu=8)], teams=[team("vision", gpu=4)])
    assert d.reason_codes["big"] == "never-fits"
    assert "more than team vision's GPU quota of 4" in d.reasons["big"]


def test_per_type_quota_caps_one_type() -> None:
    h100 = node("h", gpu=8, gpu_type="h100")
    quota = Team("vision", 1.0, Quota(gpu_by_type={"h100": 4}))
    running = [run("r", "h", gpus=(0, 1))]
    d = decide_on([h100], [job("typed", gpu=4, gpu_type="h100"), job("untyped", gpu=4)], running, [quota])
    assert d.placements == []
    assert d.reasons["typed"] == "team vision at h100 GPU quota 2/4"
    assert d.reasons["untyped"] == "team vision at h100 GPU quota 2/4"
    d = decide_on([h100, gpu_node("a")], [job("untyped", gpu=4)], running, [quota])
    assert where(d) == {"untyped": "a"}
    d = decide_on([h100], [job("other-team", "nlp", gpu=4), job("untyped", gpu=4)], running, [quota])
    assert where(d) == {"other-team": "h"}


def test_cpu_and_memory_quotas() -> None:
    d = decide_on(
        [node("a")],
        [job("c", cpu=8), job("m", "nlp", mem=64 * GIB)],
        teams=[team("vision", cpu=4), team("nlp", memory=32 * GIB)],
    )
    assert d.placements == []
    assert "needs 8 CPU, more than team vision's CPU quota of 4" in d.reasons["c"]
    assert "needs 64Gi memory, more than team nlp's memory quota of 32Gi" in d.reasons["m"]


# --- fair share ------------------------------------------------------------------------------


def test_equal_teams_split_the_gpus() -> None:
    pending = [job(f"{t}{i}", t, gpu=1, age=10 - i) for t in ("a", "b") for i in range(4)]
    d = decide_on([gpu_node("w", 4)], pending)
    placed = sorted(p.job_id for p in d.placements)
    assert placed == ["a0", "a1", "b0", "b1"]


def test_weights_split_in_proportion() -> None:
    pending = [job(f"{t}{i}", t, gpu=1, age=10 - i) for t in ("a", "b") for i in range(4)]
    d = decide_on([gpu_node("w", 4)], pending, teams=[team("a", 3), team("b", 1)])
    assert sorted(p.job_id for p in d.placements) == ["a0", "a1", "a2", "b0"]


def test_current_use_counts_against_a_team() -> None:
    d = decide_on(
        [gpu_node("w", 4)],
        [job("a-new", "a", gpu=1, age=100), job("b-new", "b", gpu=1)],
        [run("a-old", "w", "a", gpus=(0, 1, 2))],
    )
    assert where(d) == {"b-new": "w"}
    assert "waiting for capacity" in d.reasons["a-new"]


def test_decayed_history_makes_a_heavy_team_yield() -> None:
    heavy = Team("a", 1.0, usage_history=ResourceVector(0, 0, 8))
    d = decide_on([gpu_node("w", 1)], [job("a1", "a", gpu=1, age=500), job("b1", "b", gpu=1)], teams=[heavy])
    assert where(d) == {"b1": "w"}


def test_shares_are_reported_against_fair_share() -> None:
    d = decide_on(
        [gpu_node("w", 8)],
        [job("b1", "b", gpu=1)],
        [run("a1", "w", "a", gpus=(0, 1, 2, 3, 4, 5))],
        [team("a", 1), team("b", 1), team("idle", 1)],
    )
    assert d.shares["a"].fair_share == 0.5 and d.shares["idle"].fair_share == 0.0
    assert d.shares["a"].share == 0.75 and d.shares["a"].over_share
    assert d.shares["b"].share == 0.125  # after this cycle's placement


# --- priorities and aging --------------------------------------------------------------------


def test_priority_then_age_within_a_team() -> None:
    d = decide_on(
        [node("w", cpu=8)],
        [job("old", cpu=4, age=50), job("high", prio=2, cpu=4, age=1), job("newer", cpu=4, age=20)],
    )
    assert sorted(where(d)) == ["high", "old"]
    assert d.queue_position == {"high": 1, "old": 2, "newer": 3}


def test_aging_lifts_a_starving_low_job_but_not_past_the_cap() -> None:
    cfg = SchedulerConfig(aging_s_per_priority_step=600, aging_cap=2)
    starving = job("low", prio=0, age=1300)
    assert effective_priority(starving, NOW, cfg) == 2
    assert effective_priority(job("low", prio=0, age=100_000), NOW, cfg) == 2
    assert effective_priority(job("u", prio=3), NOW, cfg) == 3
    d = decide_on([node("w", cpu=4)], [starving, job("normal", cpu=4, age=5)], config=cfg)
    assert where(d) == {"low": "w"}


# --- placement ---------------------------------------------------------------------------------


def test_best_fit_keeps_big_nodes_whole_and_cpu_jobs_off_gpu_nodes() -> None:
    d = decide_on(
        [gpu_node("big"), gpu_node("small", 2), node("cpu")],
        [job("one", gpu=1), job("eight", gpu=8), job("cpu-only", cpu=4)],
        [run("r", "small", gpus=(0,))],
    )
    assert where(d) == {"one": "small", "eight": "big", "cpu-only": "cpu"}
    assert {p.job_id: p.gpu_indices for p in d.placements}["one"] == (1,)


def test_gpu_type_and_pool_are_hard() -> None:
    d = decide_on(
        [gpu_node("a100", pool="gpu"), node("h100", gpu=8, gpu_type="h100", pool="gpu")],
        [job("h", gpu=1, gpu_type="h100"), job("p", gpu=1, pool="other"), job("t", gpu=1, gpu_type="v100")],
    )
    assert where(d) == {"h": "h100"}
    assert d.reasons["p"] == "no registered worker can ever fit: none matches pool other"
    assert d.reasons["t"] == "no registered worker can ever fit: none matches gpu type v100"


def test_never_fits_names_the_largest_worker() -> None:
    d = decide_on([gpu_node("a", 4)], [job("huge", gpu=8)])
    assert d.reasons["huge"].startswith("no registered worker can ever fit: needs 1 cpu, 1Gi memory, 8×gpu")
    assert "the largest is 32 cpu, 256Gi memory, 4 gpu" in d.reasons["huge"]
    assert decide_on([], [job("x")]).reasons["x"] == "no schedulable workers are registered"


def test_largest_free_is_reported() -> None:
    d = decide_on([gpu_node("a", 4)], [job("later", gpu=4, gpu_type="a100")], [run("r", "a", gpus=(0, 1))])
    assert d.reasons["later"].startswith(
        "waiting for capacity: needs 4×a100 on one worker; largest free is 2"
    )


def test_spot_takes_only_preemptible_jobs_and_preemptible_jobs_prefer_it() -> None:
    workers = [gpu_node("spot", spot=True), gpu_node("on-demand")]
    d = decide_on(workers, [job("safe", gpu=8), job("cheap", gpu=8, preemptible=True)])
    assert where(d) == {"safe": "on-demand", "cheap": "spot"}
    d = decide_on([gpu_node("spot", spot=True)], [job("safe", gpu=1)])
    assert d.reasons["safe"].endswith("none matches on-demand (non-spot) capacity")


def test_region_is_a_soft_preference_with_a_cost_and_counted() -> None:
    workers = [gpu_node("east", region="us-east-1"), gpu_node("west", 2, region="us-west-2")]
    d = decide_on(workers, [job("j", gpu=1, region="us-east-1")])
    assert where(d) == {"j": "east"} and d.cross_region == 0  # worse fit, right region
    d = decide_on([gpu_node("west", region="us-west-2")], [job("j", gpu=1, region="us-east-1")])
    assert where(d) == {"j": "west"} and d.cross_region == 1 and d.placements[0].cross_region
    d = decide_on(
        [gpu_node("west", region="us-west-2")], [job("j", gpu=1, region="us-east-1", require_region=True)]
    )
    assert d.placements == [] and "region us-east-1" in d.reasons["j"]


def test_cached_data_wins_over_a_slightly_better_fit() -> None:
    workers = [gpu_node("tight", 2), gpu_node("cached", 4, cached=frozenset({"s3://d/cifar"}))]
    d = decide_on(workers, [job("j", gpu=1, uris=("s3://d/cifar",))])
    assert where(d) == {"j": "cached"}
    d = decide_on(workers, [job("j", gpu=1)])
    assert where(d) == {"j": "tight"}


# --- preemption --------------------------------------------------------------------------------


def test_urgent_preempts_the_cheapest_preemptible_lower_job_and_claims_its_place() -> None:
    running = [
        run("keep", "w", prio=1, gpus=(0, 1)),  # not preemptible
        run("fresh-ckpt", "w", prio=0, gpus=(2, 3), preemptible=True, started_ago=9000, checkpoint_ago=60),
        run("stale-ckpt", "w", prio=0, gpus=(4, 5), preemptible=True, started_ago=9000, checkpoint_ago=3000),
        run("high", "w", prio=2, gpus=(6, 7), preemptible=True),
    ]
    d = decide_on([gpu_node("w")], [job("urgent", "nlp", prio=3, gpu=2)], running)
    assert [(p.job_id, p.reason, p.for_job) for p in d.preemptions] == [("fresh-ckpt", "priority", "urgent")]
    assert d.placements == []  # the victim still holds the GPUs through its grace period
    assert d.claims == {"urgent": ("w",)}
    assert d.reason_codes["urgent"] == "preempting"


def test_victims_by_priority_first_then_checkpoint_then_runtime() -> None:
    running = [
        run("normal-new", "w", prio=1, gpus=(0,), preemptible=True, started_ago=10),
        run("low-old", "w", prio=0, gpus=(1,), preemptible=True, started_ago=9000),
        run("low-short", "w2", prio=0, gpus=(0,), preemptible=True, started_ago=100),
    ]
    d = decide_on([gpu_node("w", 2), gpu_node("w2", 1)], [job("u", prio=3, gpu=1)], running)
    assert [p.job_id for p in d.preemptions] == ["low-short"]


def test_no_preemption_when_the_job_still_would_not_fit() -> None:
    running = [
        run("safe", "w", gpus=(0, 1, 2, 3)),
        run("prey", "w", prio=0, gpus=(4, 5, 6, 7), preemptible=True),
    ]
    d = decide_on([gpu_node("w")], [job("u", prio=3, gpu=8)], running)
    assert d.preemptions == []
    assert d.reason_codes["u"] in ("capacity", "reservation")


def test_normal_jobs_do_not_preempt_by_priority() -> None:
    running = [run("prey", "w", "vision", prio=0, gpus=(0,), preemptible=True)]
    d = decide_on([gpu_node("w", 1)], [job("n", "vision", prio=1, gpu=1)], running)
    assert d.preemptions == []


def test_a_gang_victim_is_preempted_whole() -> None:
    running = [
        run("gang", "w1", prio=0, gpus=(0,), preemptible=True, replica=0),
        run("gang", "w2", prio=0, gpus=(0,), preemptible=True, replica=1),
    ]
    d = decide_on([gpu_node("w1", 1), gpu_node("w2", 1)], [job("u", prio=3, gpu=1)], running)
    assert [(p.job_id, p.worker_ids) for p in d.preemptions] == [("gang", ("w1", "w2"))]


def test_fair_share_reclaim_takes_back_lent_capacity_from_preemptible_jobs_only() -> None:
    running = [run(f"a{i}", "w", "a", gpus=(i,), preemptible=i >= 6) for i in range(8)]
    d = decide_on([gpu_node("w")], [job("b1", "b", gpu=2)], running)
    assert {(p.job_id, p.reason) for p in d.preemptions} == {
        ("a6", "fair-share reclaim"),
        ("a7", "fair-share reclaim"),
    }
    assert d.claims == {"b1": ("w",)}
    # nothing preemptible: b waits
    running = [replace(r, preemptible=False) for r in running]
    assert decide_on([gpu_node("w")], [job("b1", "b", gpu=2)], running).preemptions == []


def test_no_reclaim_beyond_the_claimants_fair_share() -> None:
    running = [run(f"a{i}", "w", "a", gpus=(i,), preemptible=True) for i in range(8)]
    d = decide_on([gpu_node("w")], [job("b-big", "b", gpu=6)], running)
    assert d.preemptions == []  # 6/8 would put b over its half


def test_terminating_victims_are_waited_for_not_multiplied() -> None:
    running = [
        run("going", "w", prio=0, gpus=(0, 1), preemptible=True, terminating=True),
        run("prey", "w", prio=0, gpus=(2, 3), preemptible=True),
        run("safe", "w", gpus=(4, 5, 6, 7)),
    ]
    d = decide_on([gpu_node("w")], [job("urgent", prio=3, gpu=2)], running)
    assert d.preemptions == []
    assert d.claims == {"urgent": ("w",)} and d.reason_codes["urgent"] == "draining"
    # and what the urgent job holds is not handed to the next job
    d = decide_on([gpu_node("w")], [job("urgent", prio=3, gpu=2), job("other", gpu=2)], running)
    assert "other" not in where(d)


def test_preemptions_per_cycle_are_capped() -> None:
    running = [run(f"p{i}", f"w{i}", prio=0, gpus=(0,), preemptible=True) for i in range(5)]
    cfg = SchedulerConfig(max_preemptions_per_cycle=2)
    d = decide_on(
        [gpu_node(f"w{i}", 1) for i in range(5)],
        [job(f"u{i}", prio=3, gpu=1) for i in range(5)],
        running,
        config=cfg,
    )
    assert len(d.preemptions) == 2


# --- gangs ---------------------------------------------------------------------------------------


def test_gang_places_all_replicas_across_workers_with_ranks() -> None:
    d = decide_on([gpu_node("w1", 4), gpu_node("w2", 4)], [job("g", gpu=4, replicas=2)])
    assert sorted((p.rank, p.world_size, p.worker_id) for p in d.placements) == [(0, 2, "w1"), (1, 2, "w2")]


def test_gang_is_all_or_nothing() -> None:
    d = decide_on(
        [gpu_node("w1", 4), gpu_node("w2", 4)],
        [job("g", gpu=4, replicas=2, prio=2), job("small", gpu=1, runtime=60)],
        [run("r", "w2", gpus=(0,))],
    )
    assert [p.job_id for p in d.placements] == ["small"]  # backfilled: ends before the gang's turn
    assert d.reason_codes["g"] == "reservation"


def test_gang_bigger_than_the_fleet_never_fits() -> None:
    d = decide_on([gpu_node("w1", 4)], [job("g", gpu=4, replicas=2)])
    assert (
        d.reasons["g"]
        == "no registered worker can ever fit: gang of 2 replicas of 1 cpu, 1Gi memory, 4×gpu; the fleet holds 1"
    )


# --- reservations and EASY backfill ---------------------------------------------------------------


def test_blocked_big_job_reserves_and_only_short_jobs_backfill() -> None:
    running = [run("r", "w", gpus=(0, 1, 2, 3), started_ago=0, runtime=3600)]
    d = decide_on(
        [gpu_node("w")],
        [
            job("big", gpu=8, prio=2),
            job("short", gpu=2, runtime=1800),
            job("long", gpu=2, runtime=7200),
        ],
        running,
    )
    assert [(r.job_id, r.worker_ids, r.start_at) for r in d.reservations] == [("big", ("w",), NOW + 3600)]
    assert where(d) == {"short": "w"}
    assert d.reason_codes["big"] == "reservation"
    assert d.reason_codes["long"] == "reserved"
    # NOW is 1970-01-02 03:46:40 UTC: a clock time, rounded up to the minute.
    assert d.reasons["long"].startswith("capacity it fits is reserved for big from 04:47 UTC")
    assert d.reasons["big"].endswith("holds a reservation on 1 worker(s), expected to start by 04:47 UTC")


def test_a_long_job_may_use_what_the_reservation_leaves_over() -> None:
    running = [run("r", "w", gpus=(0, 1, 2, 3), started_ago=0, runtime=3600)]
    d = decide_on([gpu_node("w")], [job("six", gpu=6, prio=2), job("long", gpu=2, runtime=7200)], running)
    assert where(d) == {"long": "w"}  # at 1h the six still fit next to it


def test_gang_reservation_spans_workers_and_starts_when_the_last_frees() -> None:
    running = [
        run("r1", "w1", gpus=(0,), started_ago=0, runtime=100),
        run("r2", "w2", gpus=(0,), started_ago=0, runtime=500),
    ]
    d = decide_on([gpu_node("w1", 4), gpu_node("w2", 4)], [job("g", gpu=4, replicas=2)], running)
    assert [(r.worker_ids, r.start_at) for r in d.reservations] == [(("w1", "w2"), NOW + 500)]


# --- determinism ---------------------------------------------------------------------------------


def test_same_snapshot_same_decisions_whatever_the_input_order() -> None:
    from trainyard.scheduler.synthetic import snapshot

    s = snapshot(400, 60, seed=3)
    rng = random.Random(1)
    shuffled = replace(
        s,
        workers=tuple(rng.sample(s.workers, len(s.workers))),
        pending=tuple(rng.sample(s.pending, len(s.pending))),
        running=tuple(rng.sample(s.running, len(s.running))),
    )
    a, b = decide(s), decide(shuffled)
    assert a == b
    assert a.placements and a.reasons


def test_every_unplaced_job_has_a_reason_and_a_position() -> None:
    from trainyard.scheduler.synthetic import snapshot

    s = snapshot(300, 40, seed=5)
    d = decide(s)
    placed = {p.job_id for p in d.placements}
    assert placed | set(d.reasons) == {p.id for p in s.pending}
    assert not placed & set(d.reasons)
    assert set(d.queue_position) == {p.id for p in s.pending}
    assert sorted(d.order) == sorted(p.id for p in s.pending)


def test_snapshot_helper_is_consistent() -> None:
    s = snap([node("a")], [job("x")])
    assert s.now == NOW and s.config == SchedulerConfig()
