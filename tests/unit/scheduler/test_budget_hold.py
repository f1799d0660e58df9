"""Teams over their monthly dollar budget (``Snapshot.over_budget``), table-driven on the pure
``decide``: their pending jobs wait with the reason the leader wrote and the code ``budget``; a job an
admin let through (or a task of an array let through) is scheduled; other teams are not held; running
jobs are never preempted for a budget; and a snapshot with no budgets decides as before."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.scheduler.helpers import job, node, run, snap, where
from trainyard.model.pricing import MICROS, over_budget_reason
from trainyard.scheduler.core import decide
from trainyard.scheduler.snapshot import PendingJob

REASON = over_budget_reason("vision", 5012 * MICROS, 5000 * MICROS)


def task(id_: str, array: str) -> PendingJob:
    return dataclasses.replace(job(id_), array_id=array)


@pytest.mark.parametrize(
    ("pending", "exempt", "placed", "held"),
    [
        ([job("v1"), job("n1", "nlp")], frozenset(), {"n1"}, {"v1"}),
        ([job("v1"), job("v2")], frozenset({"v2"}), {"v2"}, {"v1"}),
        ([task("a-0", "a"), task("a-1", "a"), job("v1")], frozenset({"a"}), {"a-0", "a-1"}, {"v1"}),
        ([job("v1", gpu=64)], frozenset({"v1"}), set(), set()),  # let through, then too big: never fits
    ],
    ids=["other-team-runs", "one-job-let-through", "array-let-through", "override-is-no-capacity"],
)
def test_over_budget_team_waits(
    pending: list[PendingJob], exempt: frozenset[str], placed: set[str], held: set[str]
) -> None:
    s = dataclasses.replace(snap([node("w1")], pending), over_budget={"vision": REASON}, budget_exempt=exempt)
    d = decide(s)
    assert set(where(d)) == placed
    assert {j for j, code in d.reason_codes.items() if code == "budget"} == held
    for j in held:
        assert d.reasons[j] == "team vision is over its monthly budget ($5,012 of $5,000)"


def test_running_jobs_are_not_preempted_for_a_budget_and_hold_no_capacity_back() -> None:
    running = [run("r1", "w1", cpu=31, preemptible=True)]
    s = snap([node("w1")], [job("v1", prio=3), job("n1", "nlp")], running)
    held = dataclasses.replace(s, over_budget={"vision": REASON})
    d = decide(held)
    assert d.preemptions == []
    assert where(d) == {"n1": "w1"}
    assert d.reason_codes["v1"] == "budget"


def test_without_budgets_the_decisions_are_the_same() -> None:
    s = snap([node("w1", cpu=4)], [job(f"j{i}", "vision" if i % 2 else "nlp", cpu=2) for i in range(6)])
    plain = decide(s)
    # A team with no pending jobs over its budget changes nothing either.
    other = decide(dataclasses.replace(s, over_budget={"speech": "held"}))
    assert (plain.placements, plain.reasons, plain.order) == (other.placements, other.reasons, other.order)
