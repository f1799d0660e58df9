"""Cost arithmetic (``trainyard.model.pricing``), table-driven and exact: money is integer
micro-dollars, each attempt's cost is rounded once (half to even), spot takes its discount off,
preempted work is paid for, and a monthly budget turns over at the month's first instant by
whatever clock it is given."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest

from trainyard.model import pricing
from trainyard.model.pricing import BudgetLevel, Cost, MonthlyBudget, Prices, Usage

GIB = 1024**3
HOUR = 3_600_000  # ms
M = pricing.MICROS

PRICES = Prices.from_settings(
    {
        "gpu_hour": {"a100": "2.48", "H100": 4.10},
        "gpu_hour_default": "1.00",
        "cpu_hour": 0.04,
        "gib_hour": "0.005",
        "spot_discount": "60%",
    }
)


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("2.48", 2_480_000),
        ("$5,000", 5_000 * M),
        ("$ 1,234,567.89", 1_234_567_890_000),
        ("0.000125", 125),
        ("0", 0),
        (3, 3 * M),
        (4.10, 4_100_000),  # a float by its text, never its binary value
        (0.1, 100_000),
        (Decimal("0.000001"), 1),
    ],
)
def test_parse_money(text: str | int | float | Decimal, micros: int) -> None:
    assert pricing.parse_money(text) == micros


@pytest.mark.parametrize("text", ["-1", "0.0000001", "1,00", "abc", "", "1e3", "nan", "$-5", True])
def test_bad_money_is_refused(text: str | bool) -> None:
    with pytest.raises(ValueError):
        pricing.parse_money(text)


@pytest.mark.parametrize(
    ("micros", "cents", "whole", "exact"),
    [
        (5_012_370_000, "$5,012.37", "$5,012", "5012.37"),
        (5_000 * M, "$5,000.00", "$5,000", "5000"),
        (125, "$0.00", "$0", "0.000125"),
        (4_999_999, "$5.00", "$4", "4.999999"),
        (5_000, "$0.00", "$0", "0.005"),  # half a cent: half to even
        (15_000, "$0.02", "$0", "0.015"),
        (-2_500_000, "-$2.50", "-$2", "-2.5"),
    ],
)
def test_format_money(micros: int, cents: str, whole: str, exact: str) -> None:
    assert pricing.format_money(micros) == cents
    assert pricing.format_money(micros, cents=False) == whole
    assert pricing.dollars(micros) == exact


def test_prices_from_and_to_settings() -> None:
    assert PRICES.gpu_hour == {"a100": 2_480_000, "h100": 4_100_000}
    assert (PRICES.gpu_hour_default, PRICES.cpu_hour, PRICES.gib_hour) == (M, 40_000, 5_000)
    assert PRICES.spot_discount == Fraction(3, 5)
    assert PRICES.to_settings() == {
        "gpu_hour": {"a100": "2.48", "h100": "4.1"},
        "gpu_hour_default": "1",
        "cpu_hour": "0.04",
        "gib_hour": "0.005",
        "spot_discount": "0.6",
    }
    assert Prices.from_settings(PRICES.to_settings()) == PRICES
    assert Prices.from_settings({}) == Prices()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"gpu_hour": {"a100": "-1"}}, "gpu_hour.a100"),
        ({"gpu_hour": {"A 100": "1"}}, "not a GPU type"),
        ({"gpu_hour": ["a100"]}, "must map GPU types"),
        ({"cpu_hour": "cheap"}, "cpu_hour"),
        ({"spot_discount": "1"}, "below 1"),
        ({"spot_discount": "120%"}, "below 1"),
        ({"spot_discount": "-0.1"}, "at least 0"),
        ({"gpu_price": 1}, "unknown price setting 'gpu_price'"),
    ],
)
def test_bad_settings_name_their_field(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Prices.from_settings(settings)


# -- the cost of an attempt ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "charged", "on_demand"),
    [
        # 1 A100, 8 cores, 64 GiB for an hour: 2.48 + 8 * 0.04 + 64 * 0.005 = 3.12
        (Usage(HOUR, gpu=1, gpu_type="a100", cpu=8, memory=64 * GIB), 3_120_000, 3_120_000),
        # the same on spot: 60 % off
        (Usage(HOUR, gpu=1, gpu_type="a100", cpu=8, memory=64 * GIB, spot=True), 1_248_000, 3_120_000),
        # the type's case does not matter; an unknown type or none costs the default
        (Usage(HOUR, gpu=2, gpu_type="A100", cpu=1), 5_000_000, 5_000_000),
        (Usage(HOUR, gpu=1, gpu_type="l4"), 1_040_000, 1_040_000),
        (Usage(HOUR, gpu=1, gpu_type=None), 1_040_000, 1_040_000),
        # 2 H100 preempted after 20 minutes: (8.20 + 0.04) / 3 = 2.746666... → rounded once
        (Usage(20 * 60_000, gpu=2, gpu_type="h100"), 2_746_667, 2_746_667),
        # half a core and 512 MiB for 90 s: 0.0225 $/h * 0.025 h = 0.0005625 $ = 562.5 µ$ → 562 (even)
        (Usage(90_000, cpu=0.5, memory=GIB // 2), 562, 562),
        # ... and for 94 s: 587.5 µ$ → 588 (even)
        (Usage(94_000, cpu=0.5, memory=GIB // 2), 588, 588),
        # a quarter of a core as text, a byte of memory, a millisecond: under a micro-dollar is 0
        (Usage(1, cpu="0.25", memory=1), 0, 0),
        # no running time, no cost
        (Usage(0, gpu=8, gpu_type="h100", cpu=96, memory=1600 * GIB), 0, 0),
        # a second of an A100 and a core on spot: 2.52 $/h on demand, 40 % of it charged
        (Usage(1_000, gpu=1, gpu_type="a100", spot=True), 280, 700),
        # charged and on-demand are each rounded from the exact amounts (1.4167 and 0.5667 µ$):
        # not 40 % of the rounded on-demand cost
        (Usage(5, gpu=1, gpu_type="l4", cpu=0.5, spot=True), 1, 1),
    ],
)
def test_attempt_cost(usage: Usage, charged: int, on_demand: int) -> None:
    cost = pricing.attempt_cost(PRICES, usage)
    assert (cost.micros, cost.on_demand_micros) == (charged, on_demand)
    assert cost.saved_micros == on_demand - charged
    assert cost.gpu_ms == usage.gpu * usage.ms


def test_hourly_rate_is_exact() -> None:
    rate = pricing.hourly_rate(PRICES, Usage(0, cpu=0.1, memory=GIB // 4 + 1))
    assert rate == 4_000 + 1_250 + Fraction(5_000, GIB)  # no float on the way


def test_preempted_work_is_paid_for() -> None:
    # A job preempted twice, then finished elsewhere: three attempts, every minute of them charged.
    attempts = [
        Usage(running, gpu=1, gpu_type="a100", cpu=4, memory=16 * GIB, spot=spot)
        for running, spot in ((40 * 60_000, True), (5 * 60_000, True), (HOUR, False))
    ]
    total = pricing.total_cost(PRICES, attempts)
    # 2.72 $/h on demand: 1,813,333.3 + 226,666.7 + 2,720,000 µ$, each rounded on its own
    assert total.on_demand_micros == 1_813_333 + 226_667 + 2_720_000
    # on spot 40 % of the first two: 725,333.3 and 90,666.7 µ$
    assert total.micros == 725_333 + 90_667 + 2_720_000
    assert total.saved_micros == 1_088_000 + 136_000
    assert total.gpu_hours == Decimal("1.750")
    assert sum(pricing.attempt_cost(PRICES, u) for u in attempts) == total


def test_costs_add_up_in_any_order() -> None:
    usages = [Usage(ms, cpu=Decimal("0.3"), memory=ms * 7) for ms in range(1, 2000, 37)]
    costs = [pricing.attempt_cost(PRICES, u) for u in usages]
    assert sum(costs, Cost()) == sum(reversed(costs), Cost())
    assert Cost(1, 2, 3) + Cost(10, 20, 30) == Cost(11, 22, 33)


@pytest.mark.parametrize(
    ("started", "ended", "now", "since", "until", "ms"),
    [
        (100.0, 160.5, 1000.0, None, None, 60_500),
        (100.0, None, 130.25, None, None, 30_250),  # still running: up to now
        (None, None, 1000.0, None, None, 0),  # never started
        (100.0, 90.0, 1000.0, None, None, 0),  # clocks that disagree: never negative
        (100.0, 400.0, 1000.0, 200.0, None, 200_000),  # its share after a month began
        (100.0, 400.0, 1000.0, None, 300.0, 200_000),  # its share before a month ended
        (100.0, 400.0, 1000.0, 500.0, 600.0, 0),  # outside the window
    ],
)
def test_running_ms(
    started: float | None, ended: float | None, now: float, since: float | None, until: float | None, ms: int
) -> None:
    assert pricing.running_ms(started, ended, now=now, since=since, until=until) == ms


# -- monthly budgets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (ts(2024, 5, 17, 12, 30), ts(2024, 5, 1), ts(2024, 6, 1)),
        (ts(2024, 5, 1), ts(2024, 5, 1), ts(2024, 6, 1)),  # the first instant is in the month
        (ts(2024, 5, 31, 23, 59, 59), ts(2024, 5, 1), ts(2024, 6, 1)),
        (ts(2024, 12, 31, 23, 0), ts(2024, 12, 1), ts(2025, 1, 1)),  # the year turns
        (ts(2024, 2, 29, 8), ts(2024, 2, 1), ts(2024, 3, 1)),  # a leap February
    ],
)
def test_month_window_utc(now: float, start: float, end: float) -> None:
    assert pricing.month_window(now) == (start, end)


def test_month_window_in_a_time_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 23:30 UTC on 31 March is already 1 April in Berlin (CEST, +2).
    start, end = pricing.month_window(ts(2024, 3, 31, 23, 30), berlin)
    assert datetime.fromtimestamp(start, UTC) == datetime(2024, 3, 31, 22, 0, tzinfo=UTC)
    assert datetime.fromtimestamp(end, UTC) == datetime(2024, 4, 30, 22, 0, tzinfo=UTC)
    # March began in winter time (+1): its window is 743 hours long, not 744.
    start, end = pricing.month_window(ts(2024, 3, 15), berlin)
    assert (end - start) / 3600 == 743


def test_the_month_rolls_over_by_the_injected_clock() -> None:
    now = [ts(2024, 1, 31, 23, 59, 59)]
    budget = MonthlyBudget(limit=5_000 * M, clock=lambda: now[0])
    assert budget.window() == (ts(2024, 1, 1), ts(2024, 2, 1))
    now[0] += 1
    assert budget.window() == (ts(2024, 2, 1), ts(2024, 3, 1))
    # An attempt that ran across midnight is charged to each month for its share.
    started, ended = ts(2024, 1, 31, 23), ts(2024, 2, 1, 1)
    january = pricing.running_ms(started, ended, now=now[0], until=ts(2024, 2, 1))
    february = pricing.running_ms(started, ended, now=now[0], since=ts(2024, 2, 1))
    assert (january, february) == (HOUR, HOUR)


@pytest.mark.parametrize(
    ("spent", "limit", "level"),
    [
        (0, 5_000 * M, BudgetLevel.UNDER),
        (3_999_999_999, 5_000 * M, BudgetLevel.UNDER),  # a micro-dollar short of 80 %
        (4_000 * M, 5_000 * M, BudgetLevel.WARNING),  # exactly 80 %
        (4_999_999_999, 5_000 * M, BudgetLevel.WARNING),
        (5_000 * M, 5_000 * M, BudgetLevel.OVER),  # exactly 100 %
        (5_012 * M, 5_000 * M, BudgetLevel.OVER),
        (0, 0, BudgetLevel.OVER),  # a zero budget: nothing may be spent
        (10**18, None, BudgetLevel.UNDER),  # no budget
        (7, 9, BudgetLevel.UNDER),  # 77.8 %: exact, no float
        (8, 10, BudgetLevel.WARNING),
    ],
)
def test_budget_levels(spent: int, limit: int | None, level: BudgetLevel) -> None:
    assert pricing.budget_level(spent, limit) is level


@pytest.mark.parametrize(
    ("before", "after", "fired"),
    [
        (0, 100, ()),
        (3_999, 4_000, (80,)),
        (4_000, 4_500, ()),  # already past 80: it fired before
        (4_999, 5_000, (100,)),
        (3_000, 6_000, (80, 100)),  # one big attempt passes both
        (5_000, 9_000, ()),
    ],
)
def test_thresholds_fire_once_when_crossed(before: int, after: int, fired: tuple[int, ...]) -> None:
    assert pricing.crossed(before * M, after * M, 5_000 * M) == fired
    assert pricing.crossed(before * M, after * M, None) == ()


def test_pending_reason_and_percent() -> None:
    assert pricing.over_budget_reason("vision", 5_012_370_000, 5_000 * M) == (
        "team vision is over its monthly budget ($5,012 of $5,000)"
    )
    # Whole dollars would read "$5,000 of $5,000": cents then.
    assert pricing.over_budget_reason("nlp", 5_000_400_000, 5_000 * M) == (
        "team nlp is over its monthly budget ($5,000.40 of $5,000.00)"
    )
    assert pricing.over_budget_reason("nlp", 5_000 * M, 5_000 * M) == (
        "team nlp is over its monthly budget ($5,000 of $5,000)"
    )
    assert pricing.percent_used(4_006 * M, 5_000 * M) == Decimal("80.1")
    assert pricing.percent_used(1, 0) == Decimal(100)
    budget = MonthlyBudget(limit=5_000 * M, clock=lambda: 0.0)
    assert budget.reason("vision", 4_999 * M) is None
    assert budget.reason("vision", 5_012 * M) == "team vision is over its monthly budget ($5,012 of $5,000)"


@pytest.mark.parametrize(
    ("text", "micros"),
    [("5000/month", 5_000 * M), ("$5,000/month", 5_000 * M), ("5000/mo", 5_000 * M), ("250.50", 250_500_000)],
)
def test_parse_budget(text: str, micros: int) -> None:
    assert pricing.parse_budget(text) == micros


def test_only_monthly_budgets() -> None:
    with pytest.raises(ValueError, match="only monthly budgets"):
        pricing.parse_budget("500/week")
