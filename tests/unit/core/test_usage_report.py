"""Usage reports and budget spending (model/pricing.py), property-tested: cost arithmetic and the
spot discount are exact, groups add up to the total in any order, a month's spending is the sum of
each attempt's share of that month, and bad ``--by``/``--since`` input is refused."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainyard.model.pricing import (
    GIB,
    MICROS,
    MS_PER_HOUR,
    AttemptRecord,
    CostTable,
    Prices,
    Usage,
    attempt_cost,
    hourly_rate,
    month_window,
    parse_dimensions,
    parse_since,
    team_spend,
    usage_report,
)

NOW = datetime(2026, 12, 10, 8, tzinfo=UTC).timestamp()

prices_st = st.builds(
    Prices,
    gpu_hour=st.dictionaries(
        st.sampled_from(["a100", "h100", "l4"]), st.integers(0, 50 * MICROS), max_size=3
    ),
    gpu_hour_default=st.integers(0, 10 * MICROS),
    cpu_hour=st.integers(0, MICROS),
    gib_hour=st.integers(0, MICROS // 10),
    spot_discount=st.fractions(0, Fraction(99, 100), max_denominator=100),
)
usage_st = st.builds(
    Usage,
    ms=st.integers(0, 48 * MS_PER_HOUR),
    gpu=st.integers(0, 8),
    gpu_type=st.sampled_from([None, "a100", "h100", "t4"]),
    cpu=st.sampled_from([0.5, 1, 2, 4.25, 96]),
    memory=st.integers(0, 512 * GIB),
    spot=st.booleans(),
)
record_st = st.builds(
    AttemptRecord,
    team=st.sampled_from(["vision", "nlp"]),
    user=st.sampled_from(["alice", "bob", "carol"]),
    started_at=st.floats(NOW - 40 * 86400, NOW - 1, allow_nan=False),
    ended_at=st.one_of(st.none(), st.floats(NOW - 40 * 86400, NOW, allow_nan=False)),
    gpu=st.integers(0, 8),
    gpu_type=st.sampled_from([None, "a100", "h100"]),
    cpu=st.sampled_from([1, 2, 8]),
    memory=st.sampled_from([0, GIB, 64 * GIB]),
    spot=st.booleans(),
)


@given(prices_st, usage_st)
def test_cost_is_the_exact_rate_times_time_rounded_once(prices: Prices, usage: Usage) -> None:
    cost = attempt_cost(prices, usage)
    exact = hourly_rate(prices, usage) * Fraction(usage.ms, MS_PER_HOUR)
    assert abs(cost.on_demand_micros - exact) <= Fraction(1, 2)
    assert cost.gpu_ms == usage.gpu * usage.ms
    if usage.spot:
        charged = exact * (1 - prices.spot_discount)
        assert abs(cost.micros - charged) <= Fraction(1, 2)
    else:
        assert cost.micros == cost.on_demand_micros
    # What spot saved and what was charged add up to the on-demand cost, exactly.
    assert cost.micros + cost.saved_micros == cost.on_demand_micros
    assert 0 <= cost.micros <= cost.on_demand_micros


@given(prices_st, st.lists(usage_st, max_size=20))
def test_the_cost_table_gives_the_same_costs_in_integers(prices: Prices, usages: list[Usage]) -> None:
    table = CostTable(prices)
    for usage in usages:
        assert table.cost(usage) == attempt_cost(prices, usage)


@given(prices_st, usage_st)
def test_spot_never_costs_more_and_saves_the_discount(prices: Prices, usage: Usage) -> None:
    on_demand = attempt_cost(
        prices, Usage(usage.ms, usage.gpu, usage.gpu_type, usage.cpu, usage.memory, False)
    )
    spot = attempt_cost(prices, Usage(usage.ms, usage.gpu, usage.gpu_type, usage.cpu, usage.memory, True))
    assert spot.on_demand_micros == on_demand.on_demand_micros
    assert spot.micros <= on_demand.micros
    # Rounded once each: the saving is the discount's share of the on-demand cost, to a micro-dollar.
    assert abs(spot.saved_micros - prices.spot_discount * on_demand.on_demand_micros) <= 1


@given(prices_st, st.lists(record_st, max_size=30), st.permutations(["team", "user", "gpu-type", "spot"]))
def test_groups_add_up_to_the_total_whatever_the_grouping(
    prices: Prices, records: list[AttemptRecord], dims: list[str]
) -> None:
    since = NOW - 30 * 86400
    for n in range(len(dims) + 1):
        by = tuple(dims[:n])
        lines, total = usage_report(prices, records, by, now=NOW, since=since)
        assert sum(line.cost.micros for line in lines) == total.micros
        assert sum(line.cost.saved_micros for line in lines) == total.saved_micros
        assert sum(line.cost.gpu_ms for line in lines) == total.gpu_ms
        assert len({line.key for line in lines}) == len(lines)
        assert [line.cost.micros for line in lines] == sorted(
            (line.cost.micros for line in lines), reverse=True
        )
        # The same attempts in another order give the same report.
        again, total_again = usage_report(prices, list(reversed(records)), by, now=NOW, since=since)
        assert total_again == total and again == lines


@given(prices_st, st.lists(record_st, max_size=30))
def test_a_months_spending_is_each_attempts_share_of_it(prices: Prices, records: list[AttemptRecord]) -> None:
    window = month_window(NOW)
    spent = team_spend(prices, records, now=NOW, window=window)
    _, vision = usage_report(
        prices, [r for r in records if r.team == "vision"], (), now=NOW, since=window[0], until=window[1]
    )
    assert spent.get("vision", 0) == vision.micros
    # Work before the month started counts nothing in it.
    earlier = [r for r in records if r.ended_at is not None and r.ended_at <= window[0]]
    assert team_spend(prices, earlier, now=NOW, window=window) == {}


def test_a_running_attempt_counts_up_to_now_and_a_preempted_one_to_its_end() -> None:
    prices = Prices(cpu_hour=MICROS)
    running = AttemptRecord("vision", "alice", NOW - 3600, None, cpu=2)
    preempted = AttemptRecord("vision", "alice", NOW - 7200, NOW - 5400, cpu=2)
    lines, total = usage_report(prices, [running, preempted], ("user",), now=NOW, since=NOW - 86400)
    assert total.micros == 3 * MICROS
    assert [(line.key, line.attempts) for line in lines] == [(("alice",), 2)]


@pytest.mark.parametrize(
    ("text", "dims"),
    [
        (None, ()),
        ("", ()),
        ("user,gpu-type", ("user", "gpu-type")),
        ("gpu_type, team", ("gpu-type", "team")),
        ("spot", ("spot",)),
        ("gpu", ("gpu-type",)),
    ],
)
def test_parse_dimensions(text: str | None, dims: tuple[str, ...]) -> None:
    assert parse_dimensions(text) == dims


@pytest.mark.parametrize("text", ["colour", "user,user", "user,,team", "team;user"])
def test_bad_dimensions_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_dimensions(text)


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("30d", NOW - 30 * 86400),
        ("12h", NOW - 12 * 3600),
        ("90m", NOW - 90 * 60),
        ("2w", NOW - 14 * 86400),
        ("month", datetime(2026, 12, 1, tzinfo=UTC).timestamp()),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC).timestamp()),
    ],
)
def test_parse_since(text: str, start: float) -> None:
    assert parse_since(text, NOW) == start


@pytest.mark.parametrize("text", ["yesterday", "-3d", "3y", "400d", "2026-13-01", "2027-01-01", "1e3d", ""])
def test_bad_since_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since(text, NOW)
