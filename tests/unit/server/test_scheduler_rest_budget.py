"""The scheduler's rests as a budget (issue 14): idle time counts towards them, so a kick on an
idle scheduler runs a cycle at once, while a stream of kicks still keeps the scheduler thread busy
a fifth of the time at most."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trainyard.server.run import (
    SCHEDULER_MIN_GAP_S,
    SCHEDULER_REST_CREDIT_S,
    SCHEDULER_REST_FACTOR,
    SchedulerRest,
    cycle_gap,
)

cycles = st.lists(
    st.tuples(st.floats(0, 0.5, allow_nan=False), st.booleans(), st.floats(0, 0.2, allow_nan=False)),
    min_size=1,
    max_size=60,
)


def _run(rest: SchedulerRest, plan: list[tuple[float, bool, float]]) -> tuple[float, float, list[float]]:
    """Cycles back to back as the loop runs them: each takes its CPU as wall time, rests, then
    waits ``idle`` more for its kick. Returns (CPU, wall time, rests)."""
    now, cpu_total, rests = 0.0, 0.0, []
    for cpu, placed, idle in plan:
        started = now
        now += cpu
        gap = rest.after(cpu, placed, started, now)
        rests.append(gap)
        cpu_total += cpu
        now += gap + idle
    return cpu_total, now, rests


@given(cycles)
def test_the_scheduler_is_busy_a_fifth_of_the_time_at_most_beyond_its_credit(
    plan: list[tuple[float, bool, float]],
) -> None:
    cpu, wall, _ = _run(SchedulerRest(), plan)
    assert (
        cpu <= (wall + SCHEDULER_REST_FACTOR * SCHEDULER_REST_CREDIT_S) / (1 + SCHEDULER_REST_FACTOR) + 1e-9
    )


@given(cycles)
def test_a_rest_is_never_longer_than_the_old_rule(plan: list[tuple[float, bool, float]]) -> None:
    _, _, rests = _run(SchedulerRest(), plan)
    for (cpu, placed, _), gap in zip(plan, rests, strict=True):
        assert gap <= cycle_gap(cpu, placed) + 1e-9
        if placed:
            assert gap >= SCHEDULER_MIN_GAP_S


def test_a_kick_on_an_idle_scheduler_runs_at_once() -> None:
    rest = SchedulerRest()
    # A report's cycle (no placement) after a quiet second: the next kick (a submission) waits for
    # no rest, where the old rule rested 4x the cycle's CPU.
    assert rest.after(0.002, False, 1.0, 1.003) == 0.0
    assert rest.after(0.003, True, 1.010, 1.014) == SCHEDULER_MIN_GAP_S


def test_under_a_stream_of_kicks_each_cycle_rests_as_before() -> None:
    rest = SchedulerRest()
    now, gaps = 0.0, []
    for _ in range(50):
        started, now = now, now + 0.004
        gaps.append(rest.after(0.004, False, started, now))
        now += gaps[-1]
    assert gaps[0] == 0.0  # the credit
    assert gaps[-1] == SCHEDULER_REST_FACTOR * 0.004
