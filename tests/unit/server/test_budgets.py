"""Dollar budgets on the control plane's services, with a fake clock: the 80 % alert (event on the
outbox, audit entry, metric) fires once a month, at 100 % the team's new jobs wait with the reason
that says so while its running ones go on, an admin lets one job through or lifts the budget, and a
new calendar month starts the spending afresh."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.unit.server.plane import ALICE, BOB, FakeClock, Plane, build
from trainyard.model.pricing import Prices
from trainyard.model.records import User, Worker
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.server.hub import Kick
from trainyard.server.metrics import Metrics
from trainyard.server.services.usage import (
    FULL_EVERY_S,
    BudgetWatch,
    UsageForbidden,
    UsageRejected,
    UsageService,
)

pytestmark = pytest.mark.anyio
ADMIN = User("root", "ops", "admin")
HOUR = 3600.0
# 4 cores at $1 a core-hour: a job of the tests costs $4 an hour.
PRICES = {"cpu_hour": "1.00", "gib_hour": 0, "gpu_hour": {"a100": "2.00"}, "spot_discount": "60%"}


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at("2026-12-10T08:00:00"))


class Budgets:
    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        self.metrics = Metrics()
        self.watch = BudgetWatch(plane.store, self.metrics, clock=plane.clock, every_s=5.0)
        self.usage = UsageService(plane.store, self.watch, Kick(), clock=plane.clock)
        plane.scheduler.budgets = self.watch
        plane.store.usage.set_prices(Prices.from_settings(PRICES), "root")

    def set_budget(self, team: str, dollars: str | None) -> None:
        self.plane.store.set_team(team, {"monthly_budget": None if dollars is None else int(dollars) * 10**6})
        self.watch.invalidate()

    def ratio(self, team: str) -> float | None:
        return self.metrics.registry.get_sample_value("trainyard_team_budget_used_ratio", {"team": team})

    def alerts(self, team: str, percent: int) -> float | None:
        return self.metrics.registry.get_sample_value(
            "trainyard_team_budget_alerts_total", {"team": team, "percent": str(percent)}
        )


@pytest.fixture
def budgets(tmp_path: Path, clock: FakeClock) -> Iterator[Budgets]:
    p = build(tmp_path, clock)
    try:
        yield Budgets(p)
    finally:
        p.close()


async def running_job(plane: Plane, worker: Worker, user: User = ALICE) -> str:
    job = await plane.submit(user)
    leases = plane.schedule()
    assert [lease.job_id for lease in leases] == [job.id]
    await plane.start(leases[0])
    return job.id


async def advance(plane: Plane, worker: Worker, seconds: float) -> None:
    """Time passes; the worker beats, so it is alive at the new time."""
    plane.clock.advance(seconds)
    await plane.beat(worker)
    await plane.beat(worker)


def budget_events(plane: Plane) -> list[dict[str, object]]:
    rows = plane.store.outbox_unsent(10_000)
    return [r.payload for r in rows if str(r.payload["type"]).startswith("budget.")]


async def test_hold_at_100_percent_running_jobs_go_on_and_an_admin_lets_one_through(budgets: Budgets) -> None:
    plane = budgets.plane
    w = await plane.worker("w1", cpu=16)
    budgets.set_budget("vision", "10")
    first = await running_job(plane, w)

    await advance(plane, w, 2 * HOUR)  # $8 of $10: the warning, not yet the hold
    assert budgets.watch.holds().over_budget == {}
    assert budgets.ratio("vision") == pytest.approx(0.8)
    assert budgets.alerts("vision", 80) == 1.0

    await advance(plane, w, HOUR)  # $12 of $10
    second = await plane.submit(ALICE)
    other_team = await plane.submit(BOB)
    # Another team's job is not held; the running job is not stopped.
    assert [lease.job_id for lease in plane.schedule()] == [other_team.id]
    held = plane.job(second.id)
    assert held.status is JobStatus.PENDING
    assert held.pending_reason == "team vision is over its monthly budget ($12 of $10)"
    assert plane.job(first).status is JobStatus.RUNNING
    assert budgets.alerts("vision", 100) == 1.0
    assert budgets.ratio("vision") == pytest.approx(1.2)

    # Only an admin lets a job through; then it (and no other of the team's) runs.
    with pytest.raises(UsageForbidden):
        await budgets.usage.allow_over_budget(ALICE, second.id)
    assert await budgets.usage.allow_over_budget(ADMIN, second.id) == "vision"
    third = await plane.submit(ALICE)
    assert [lease.job_id for lease in plane.schedule()] == [second.id]
    assert plane.job(third.id).pending_reason == "team vision is over its monthly budget ($12 of $10)"

    # Lifting the budget lets the rest go.
    budgets.set_budget("vision", None)
    assert [lease.job_id for lease in plane.schedule()] == [third.id]
    assert budgets.ratio("vision") is None  # no budget, no gauge
    audit = plane.store.list_audit(team="vision")
    assert [e.action for e in audit if e.action.startswith("budget.")] == [
        "budget.exceeded",
        "budget.warning",
    ]


async def test_the_alerts_fire_once_a_month_on_the_outbox(budgets: Budgets) -> None:
    plane = budgets.plane
    w = await plane.worker("w1", cpu=8)
    budgets.set_budget("vision", "10")
    await running_job(plane, w)
    await advance(plane, w, 2.1 * HOUR)
    for _ in range(5):
        await advance(plane, w, 6)  # past the recompute interval each time
        budgets.watch.holds()
    events = budget_events(plane)
    assert [(e["type"], e["team"]) for e in events] == [("budget.warning", "vision")]
    data = events[0]["data"]
    assert isinstance(data, dict)
    assert data["percent"] == 80 and data["budget_micros"] == 10_000_000 and data["month"] == "2026-12"
    # A second watch (a new leader) does not fire it again: the alert row is the guard.
    other = BudgetWatch(plane.store, Metrics(), clock=plane.clock)
    other.holds()
    assert len(budget_events(plane)) == 1


async def test_month_rollover_starts_the_spending_afresh(tmp_path: Path) -> None:
    clock = FakeClock(at("2026-12-31T20:00:00"))
    plane = build(tmp_path, clock)
    try:
        budgets = Budgets(plane)
        w = await plane.worker("w1", cpu=8)
        budgets.set_budget("vision", "10")
        first = await running_job(plane, w)
        await advance(plane, w, 3 * HOUR)  # 23:00: $12 of $10
        held = await plane.submit(ALICE)
        plane.schedule()
        assert plane.job(held.id).pending_reason == "team vision is over its monthly budget ($12 of $10)"
        await advance(
            plane, w, HOUR + 60
        )  # 00:01 on January 1st: the running job has cost 7 cents this month
        leases = plane.schedule()
        assert [lease.job_id for lease in leases] == [held.id]
        assert budgets.ratio("vision") == pytest.approx(4 * 60 / 3600 / 10, rel=1e-5)
        # A new month's alerts are new: the warning fires again once January's spending crosses 80 %.
        for lease in leases:
            await plane.start(lease)
        await advance(plane, w, HOUR)  # two jobs at $4 an hour: $8.07 of $10
        budgets.watch.holds()
        months = [(e["type"], e["data"]["month"]) for e in budget_events(plane)]  # type: ignore[index]
        assert months == [
            ("budget.warning", "2026-12"),
            ("budget.exceeded", "2026-12"),
            ("budget.warning", "2027-01"),
        ]
        assert plane.job(first).status is JobStatus.RUNNING
    finally:
        plane.close()


async def test_preempted_and_lost_work_is_paid_for_and_running_work_up_to_now(budgets: Budgets) -> None:
    plane = budgets.plane
    w = await plane.worker("w1", cpu=8, spot="true")
    job = await plane.submit(ALICE, preemptible=True)
    leases = plane.schedule()
    await plane.start(leases[0])
    await advance(plane, w, HOUR)
    assert await plane.finish(leases[0], AttemptOutcome.PREEMPTED, None) is JobStatus.PENDING
    leases = plane.schedule()
    await plane.start(leases[0])
    await advance(plane, w, HOUR / 2)  # the second attempt still runs
    report = await budgets.usage.report(ALICE, team=None, by="team,spot", since="1d")
    assert report["total"]["attempts"] == 2
    # 1.5 h of 4 cores at $1, on spot at 60 % off: $2.40 charged, $3.60 saved.
    assert report["groups"] == [
        {
            "team": "vision",
            "spot": "spot",
            "attempts": 2,
            "gpu_hours": "0.000",
            "cost": "2.4",
            "on_demand_cost": "6",
            "spot_saved": "3.6",
            "cost_micros": 2_400_000,
            "spot_saved_micros": 3_600_000,
        }
    ]
    assert plane.job(job.id).status is JobStatus.RUNNING
    del w


async def test_reports_are_scoped_and_validated(budgets: Budgets) -> None:
    u = budgets.usage
    mine = await u.report(ALICE, team=None, by=None, since=None)
    assert mine["team"] == "vision" and mine["groups"] == []
    with pytest.raises(UsageForbidden):
        await u.report(ALICE, team="nlp", by=None, since=None)
    assert (await u.report(ADMIN, team=None, by="team", since="30d"))["team"] is None
    for kwargs, field in (
        ({"by": "colour"}, "by"),
        ({"by": "user,user"}, "by"),
        ({"since": "yesterday"}, "since"),
        ({"since": "5000d"}, "since"),
        ({"since": "2999-01-01"}, "since"),
    ):
        with pytest.raises(UsageRejected) as e:
            await u.report(ADMIN, team=None, **{"by": None, "since": None, **kwargs})
        assert e.value.field == field
    with pytest.raises(UsageRejected):
        await u.report(ADMIN, team="../etc", by=None, since=None)
    with pytest.raises(UsageForbidden):
        await u.set_prices(ALICE, PRICES)
    with pytest.raises(UsageRejected):
        await u.set_prices(ADMIN, {"cpu_hour": "-1"})
    assert (await u.prices())["prices"]["cpu_hour"] == "1"


async def test_the_running_sum_matches_a_full_read_as_attempts_end(budgets: Budgets) -> None:
    plane = budgets.plane
    w = await plane.worker("w1", cpu=16)
    budgets.set_budget("vision", "1000")
    leases = []
    for _ in range(3):
        await plane.submit(ALICE)
    leases = plane.schedule()
    for lease in leases:
        await plane.start(lease)
    budgets.watch.holds()
    assert budgets.watch.full_reads == 1
    for step, lease in enumerate(leases):
        await advance(plane, w, 5 * 60)
        outcome = AttemptOutcome.PREEMPTED if step == 0 else AttemptOutcome.SUCCEEDED
        await plane.finish(lease, outcome, 0)
        for _ in range(15):  # past the settling time, a recompute each 6 s
            await advance(plane, w, 6)
            budgets.watch.holds()
            fresh = Budgets.__new__(Budgets)
            fresh.metrics = Metrics()
            fresh.watch = BudgetWatch(plane.store, fresh.metrics, clock=plane.clock)
            fresh.watch.holds()
            # Equal up to the rounding of each sum to a micro-dollar.
            assert budgets.ratio("vision") == pytest.approx(fresh.ratio("vision"), abs=1e-8)
    # 19.5 minutes: the first read, and the periodic full read after FULL_EVERY_S; every other
    # recompute read only the attempts still open or just ended.
    assert FULL_EVERY_S == 900
    assert budgets.watch.full_reads == 2


async def test_in_the_background_the_scheduler_gets_the_last_answer_meanwhile(budgets: Budgets) -> None:
    plane = budgets.plane
    w = await plane.worker("w1", cpu=16)
    budgets.set_budget("vision", "1")
    await running_job(plane, w)
    await advance(plane, w, HOUR)  # $4 of $1
    watch = BudgetWatch(plane.store, Metrics(), clock=plane.clock, background=True)
    assert watch.holds().over_budget == {}  # nothing computed yet: the cycle does not wait
    held = wait_for(lambda: watch.holds().over_budget, 30, 0.05, "the background sum")
    assert held == {"vision": "team vision is over its monthly budget ($4 of $1)"}
