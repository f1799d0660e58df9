"""The store's budgets-and-usage repository against every implementation (SQLite, PostgreSQL):
prices round-trip exactly, attempts are found by the time they ran (running, preempted and finished
ones, with their worker's GPU type and spot), an alert fires once per team, month and threshold
with its event and audit entry, and overrides are kept per team."""

from __future__ import annotations

from fractions import Fraction

import pytest

from tests.contract.test_store import ALICE, BOB, finish, lease_one, spec, worker
from trainyard.model.pricing import MICROS, Prices, usage_report
from trainyard.model.states import AttemptOutcome
from trainyard.store.sql import NotFound, SqlStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_prices_round_trip_exactly(store: SqlStore) -> None:
    assert store.usage.get_prices() is None
    p = Prices({"a100": 2_480_000, "h100": 4_100_001}, 1, 40_000, 5_000, Fraction(3, 5))
    store.usage.set_prices(p, "root")
    got = store.usage.get_prices()
    assert got is not None and got.prices == p and got.updated_by == "root"
    store.usage.set_prices(Prices(cpu_hour=MICROS), "ops")
    got = store.usage.get_prices()
    assert got is not None and got.prices == Prices(cpu_hour=MICROS) and got.updated_by == "ops"


def test_attempts_between_finds_what_ran_in_the_window(store: SqlStore) -> None:
    clock = Clock()
    store.clock = clock
    spot = worker(store, "s1", gpu=2, gpu_type="a100", labels={"spot": "true"})
    plain = worker(store, "d1")
    preempted = store.submit(ALICE, spec(resources={"cpu": 2, "gpu": 1}, preemptible=True)).job
    attempt, token = lease_one(store, preempted.id, spot)
    assert store.report_started(preempted.id, attempt, token, spot).ok
    clock.now += 100
    finish(store, preempted.id, attempt, token, spot, AttemptOutcome.PREEMPTED, None)
    running = store.submit(BOB, spec(resources={"cpu": 1})).job
    attempt2, token2 = lease_one(store, running.id, plain)
    assert store.report_started(running.id, attempt2, token2, plain).ok
    never = store.submit(ALICE, spec()).job  # pending: no attempt, no cost
    del never
    clock.now += 50

    found = sorted(store.usage.attempts_between(clock.now - 1000, clock.now), key=lambda r: r.team)
    assert [(r.team, r.user, r.gpu, r.gpu_type, r.spot, r.ended_at is None) for r in found] == [
        ("nlp", "bob", 0, None, False, True),
        ("vision", "alice", 1, "a100", True, False),
    ]
    vision = found[1]
    assert vision.ended_at is not None and vision.ended_at - vision.started_at == pytest.approx(100)
    assert [r.team for r in store.usage.attempts_between(clock.now - 1000, clock.now, teams={"nlp"})] == [
        "nlp"
    ]
    assert store.usage.attempts_between(clock.now - 1000, clock.now, teams=set()) == []
    # The preempted attempt ended 50 s ago: a window after it has only the running one.
    assert [r.team for r in store.usage.attempts_between(clock.now - 10, clock.now)] == ["nlp"]
    # A window before anything started has nothing.
    assert store.usage.attempts_between(clock.now - 10_000, clock.now - 1000) == []


def test_an_alert_fires_once_with_its_event_and_audit_entry(store: SqlStore) -> None:
    assert store.usage.fire_alert("vision", "2026-12", 80, 8 * MICROS, 10 * MICROS)
    assert not store.usage.fire_alert("vision", "2026-12", 80, 9 * MICROS, 10 * MICROS)
    assert store.usage.fire_alert("vision", "2026-12", 100, 10 * MICROS, 10 * MICROS)
    assert store.usage.fire_alert("vision", "2027-01", 80, 8 * MICROS, 10 * MICROS)
    assert store.usage.fired_alerts("2026-12") == {("vision", 80), ("vision", 100)}
    events = [r.payload for r in store.outbox_unsent(100) if str(r.payload["type"]).startswith("budget.")]
    assert [(e["type"], e["team"], e["data"]["month"]) for e in events] == [
        ("budget.warning", "vision", "2026-12"),
        ("budget.exceeded", "vision", "2026-12"),
        ("budget.warning", "vision", "2027-01"),
    ]
    audit = [e.action for e in store.list_audit(team="vision")]
    assert audit == ["budget.warning", "budget.exceeded", "budget.warning"]


def test_overrides_are_kept_per_team(store: SqlStore) -> None:
    job = store.submit(ALICE, spec()).job
    other = store.submit(BOB, spec()).job
    assert store.usage.allow_over_budget(job.id, "root") == "vision"
    assert store.usage.allow_over_budget(job.id, "root") == "vision"  # idempotent
    store.usage.allow_over_budget(other.id, "root")
    assert store.usage.budget_overrides({"vision"}) == {job.id}
    assert store.usage.budget_overrides(set()) == frozenset()
    with pytest.raises(NotFound):
        store.usage.allow_over_budget("j0missing", "root")


def test_usage_groups_sum_what_attempts_between_lists(store: SqlStore) -> None:
    clock = Clock()
    store.clock = clock
    spot = worker(store, "s1", gpu=4, gpu_type="a100", labels={"spot": "true"})
    plain = worker(store, "d1", gpu=4, gpu_type="h100")
    for i, (who, wid) in enumerate([(ALICE, spot), (ALICE, spot), (BOB, plain), (ALICE, plain)]):
        job = store.submit(who, spec(resources={"cpu": 2, "gpu": 1}, preemptible=True)).job
        attempt, token = lease_one(store, job.id, wid)
        assert store.report_started(job.id, attempt, token, wid).ok
        clock.now += 100 * (i + 1)
        if i != 3:  # the last one still runs
            finish(store, job.id, attempt, token, wid, AttemptOutcome.SUCCEEDED)
    clock.now += 30
    prices = Prices({"a100": 2 * MICROS, "h100": 4 * MICROS}, spot_discount=Fraction(1, 2))
    for since in (clock.now - 10_000, clock.now - 450, clock.now - 100):
        records = store.usage.attempts_between(since, clock.now)
        groups = store.usage.usage_groups(since, clock.now, now=clock.now)
        one = usage_report(prices, records, ("team", "gpu-type", "spot"), now=clock.now, since=since)
        summed = usage_report(prices, groups, ("team", "gpu-type", "spot"), now=clock.now, since=since)
        assert [(line.key, line.attempts) for line in summed[0]] == [
            (line.key, line.attempts) for line in one[0]
        ]
        # The same money up to one rounding per group.
        assert abs(summed[1].micros - one[1].micros) <= len(groups)
    settled = store.usage.usage_groups(0, clock.now, now=clock.now, ended_before=clock.now - 100)
    fresh = store.usage.usage_groups(0, clock.now, now=clock.now, open_after=clock.now - 100)
    assert sum(g.attempts for g in settled) + sum(g.attempts for g in fresh) == 4
    assert {(g.team, g.spot) for g in fresh} >= {("vision", False)}  # the running one is open
