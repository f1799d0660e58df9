"""Prices, what an attempt costs, and a team's monthly budget: the arithmetic of dollar budgets
(issue 16, item 4). Pure: no I/O; the time is always a parameter (or an injected clock).

Money is an integer number of micro-dollars (``micros``, 10^-6 USD) everywhere: in prices, costs,
budgets, sums. Integers are exact, add up to the same total in any order (a report sums thousands
of attempts; SQL's ``SUM`` over a BIGINT column gives the same answer as Python), travel in JSON as
plain numbers, and need no ``decimal`` context to agree between processes. Text from an admin
(``2.48``, ``$5,000``) is read with ``Decimal``, never through a float, and must be a whole number
of micro-dollars. A cost is computed exactly (``Fraction``) from the hourly rate, the resources and
the running time in milliseconds, and rounded once, half to even, to a micro-dollar; what spot
saved is the on-demand cost less the charged one, both rounded, so the two always add up.

A cost is charged for every attempt that ran, whatever its end: a preempted, lost, failed or
cancelled attempt used its resources for its running time, and that work is paid for.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction
from typing import Any, TypeVar

MICROS = 1_000_000
"""Micro-dollars in a dollar."""
MS_PER_HOUR = 3_600_000
GIB = 1024**3

WARN_PERCENT = 80
"""At this share of its monthly budget a team gets an event and a metric."""
HOLD_PERCENT = 100
"""At this share a team's new jobs wait (running ones go on)."""
THRESHOLDS = (WARN_PERCENT, HOLD_PERCENT)

_T = TypeVar("_T")
_MONEY_RE = re.compile(r"\$?\s*(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")


# -- money ---------------------------------------------------------------------------------------


def parse_money(value: str | int | Decimal | float) -> int:
    """Micro-dollars from ``2.48``, ``$5,000``, ``0.000125``, 3 or 2.5 (a float is read by its
    shortest text, as YAML writes it). ValueError for a negative amount or one finer than 10^-6."""
    if isinstance(value, bool):
        raise ValueError("an amount of money must be a number such as 2.48")
    if isinstance(value, float):
        value = repr(value)
    if isinstance(value, str):
        m = _MONEY_RE.fullmatch(value.strip())
        if not m:
            raise ValueError(f"{value!r} is not an amount of money such as 2.48 or $5,000")
        value = Decimal(m.group(1).replace(",", "") + (m.group(2) or ""))
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount of money") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{value!r} must be a finite amount of at least 0")
    micros = amount * MICROS
    if micros != micros.to_integral_value():
        raise ValueError(f"{value!r} is finer than a micro-dollar (at most 6 decimal places)")
    return int(micros)


def format_money(micros: int, *, cents: bool = True) -> str:
    """``$5,012.37`` (or ``$5,012`` without cents: whole dollars, rounded down)."""
    sign = "-" if micros < 0 else ""
    n = abs(micros)
    if not cents:
        return f"{sign}${n // MICROS:,}"
    dollars = (Decimal(n) / MICROS).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    return f"{sign}${dollars:,.2f}"


def dollars(micros: int) -> str:
    """The exact amount as text, for JSON and settings files: ``2.48``, ``0.000125``, ``5000``."""
    text = format(Decimal(micros) / MICROS, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def parse_fraction(value: str | int | float | Decimal) -> Fraction:
    """A share from ``0.6``, ``60%`` or 0.6; ValueError unless it is at least 0 and below 1."""
    if isinstance(value, bool):
        raise ValueError("a share must be a number such as 0.6 or 60%")
    text = repr(value) if isinstance(value, float) else str(value).strip()
    percent = text.endswith("%")
    try:
        share = Fraction(Decimal(text.rstrip("%").strip()))
    except (InvalidOperation, ValueError):
        raise ValueError(f"{value!r} is not a share such as 0.6 or 60%") from None
    if percent:
        share /= 100
    if not 0 <= share < 1:
        raise ValueError(f"{value!r} must be at least 0 and below 1 (100%)")
    return share


# -- prices --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prices:
    """What an hour of each resource costs on demand, in micro-dollars, and what spot takes off."""

    gpu_hour: Mapping[str, int] = field(default_factory=dict)
    """Per GPU-hour, by GPU type (lowercase: ``a100``, ``h100``)."""
    gpu_hour_default: int = 0
    """Per GPU-hour of a type ``gpu_hour`` does not list (or of no known type)."""
    cpu_hour: int = 0
    """Per core-hour (fractions of a core pro rata)."""
    gib_hour: int = 0
    """Per GiB-hour of memory (1 GiB = 2^30 bytes)."""
    spot_discount: Fraction = Fraction(0)
    """The share taken off the on-demand price on spot (preemptible) capacity: 0.6 is 60 % off."""

    def gpu_price(self, gpu_type: str | None) -> int:
        if gpu_type is not None and gpu_type.lower() in self.gpu_hour:
            return self.gpu_hour[gpu_type.lower()]
        return self.gpu_hour_default

    @classmethod
    def from_settings(cls, data: Mapping[str, Any]) -> Prices:
        """Prices from an admin's settings (a YAML file, ``yard admin prices set``), in dollars::

            gpu_hour: {a100: 2.48, h100: "4.10"}
            gpu_hour_default: 1.00
            cpu_hour: 0.04
            gib_hour: 0.005
            spot_discount: 60%

        ValueError naming the field for anything else."""
        known = {"gpu_hour", "gpu_hour_default", "cpu_hour", "gib_hour", "spot_discount"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown price setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        table = data.get("gpu_hour") or {}
        if not isinstance(table, Mapping):
            raise ValueError("gpu_hour must map GPU types to prices, e.g. {a100: 2.48}")
        gpu: dict[str, int] = {}
        for kind, price in table.items():
            name = str(kind).strip().lower()
            if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,31}", name):
                raise ValueError(f"gpu_hour: {kind!r} is not a GPU type such as a100")
            gpu[name] = _field(f"gpu_hour.{name}", parse_money, price)
        return cls(
            gpu_hour=gpu,
            gpu_hour_default=_field("gpu_hour_default", parse_money, data.get("gpu_hour_default", 0)),
            cpu_hour=_field("cpu_hour", parse_money, data.get("cpu_hour", 0)),
            gib_hour=_field("gib_hour", parse_money, data.get("gib_hour", 0)),
            spot_discount=_field("spot_discount", parse_fraction, data.get("spot_discount", 0)),
        )

    def to_settings(self) -> dict[str, Any]:
        """The settings ``from_settings`` reads, with exact dollar amounts as text."""
        share = Decimal(self.spot_discount.numerator) / Decimal(self.spot_discount.denominator)
        return {
            "gpu_hour": {k: dollars(v) for k, v in sorted(self.gpu_hour.items())},
            "gpu_hour_default": dollars(self.gpu_hour_default),
            "cpu_hour": dollars(self.cpu_hour),
            "gib_hour": dollars(self.gib_hour),
            "spot_discount": format(share.normalize(), "f"),
        }


def _field(name: str, parse: Callable[[Any], _T], value: Any) -> _T:
    try:
        return parse(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}: {exc}") from None


# -- the cost of an attempt ----------------------------------------------------------------------


def running_ms(
    started_at: float | None,
    ended_at: float | None,
    *,
    now: float,
    since: float | None = None,
    until: float | None = None,
) -> int:
    """Milliseconds an attempt ran (epoch seconds in; a running one up to ``now``), within
    [``since``, ``until``) when given (its share of a month). 0 for one that never started."""
    if started_at is None:
        return 0
    start = started_at if since is None else max(started_at, since)
    end = now if ended_at is None else ended_at
    if until is not None:
        end = min(end, until)
    return max(0, round((end - start) * 1000))


@dataclass(frozen=True)
class Usage:
    """One attempt's resources (per replica: each gang member is an attempt of its own) and time."""

    ms: int
    """Running time in milliseconds (``running_ms``)."""
    gpu: int = 0
    gpu_type: str | None = None
    cpu: float | int | str | Decimal = 1
    """Cores, as the JobSpec has them (0.5 is half a core)."""
    memory: int = 0
    """Bytes."""
    spot: bool = False
    """It ran on spot capacity (a preemptible job on a spot worker)."""


@dataclass(frozen=True)
class Cost:
    """What some attempts cost; sums with ``+`` and ``sum``."""

    micros: int = 0
    """Charged: on demand, or with the spot discount."""
    on_demand_micros: int = 0
    """What the same work costs on demand."""
    gpu_ms: int = 0
    """GPU-milliseconds (GPUs times running time)."""

    @property
    def saved_micros(self) -> int:
        """What spot saved against on demand."""
        return self.on_demand_micros - self.micros

    @property
    def gpu_hours(self) -> Decimal:
        """GPU-hours to a thousandth, for reports."""
        return (Decimal(self.gpu_ms) / MS_PER_HOUR).quantize(Decimal("0.001"), rounding=ROUND_HALF_EVEN)

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.micros + other.micros,
            self.on_demand_micros + other.on_demand_micros,
            self.gpu_ms + other.gpu_ms,
        )

    def __radd__(self, other: int) -> Cost:  # sum() starts from 0
        if other != 0:
            return NotImplemented
        return self


def _round(x: Fraction) -> int:
    return round(x)  # Fraction.__round__: half to even, exact


def hourly_rate(prices: Prices, usage: Usage) -> Fraction:
    """Micro-dollars per hour on demand, exact."""
    cpu = Fraction(Decimal(str(usage.cpu)))
    return (
        usage.gpu * prices.gpu_price(usage.gpu_type)
        + cpu * prices.cpu_hour
        + Fraction(usage.memory, GIB) * prices.gib_hour
    )


def attempt_cost(prices: Prices, usage: Usage) -> Cost:
    """The cost of one attempt: its hourly rate times its running time, rounded once to a
    micro-dollar; on spot, less the discount."""
    on_demand = hourly_rate(prices, usage) * Fraction(usage.ms, MS_PER_HOUR)
    charged = on_demand * (1 - prices.spot_discount) if usage.spot else on_demand
    return Cost(_round(charged), _round(on_demand), usage.gpu * usage.ms)


def _div_half_even(num: int, den: int) -> int:
    """``round(Fraction(num, den))`` for num >= 0 < den, in integers only."""
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q & 1):
        return q + 1
    return q


class CostTable:
    """``attempt_cost`` for many attempts at one price table, in integers: each resource shape's
    hourly rate is computed (exactly) once. A report over 100,000 attempts spent most of its time in
    ``Fraction`` arithmetic otherwise. Same results as ``attempt_cost`` (property-tested)."""

    def __init__(self, prices: Prices) -> None:
        self.prices = prices
        d = prices.spot_discount
        self._keep = (d.denominator - d.numerator, d.denominator)
        self._rates: dict[tuple[Any, ...], tuple[int, int]] = {}

    def cost(self, usage: Usage) -> Cost:
        key = (usage.gpu, usage.gpu_type, usage.cpu, usage.memory)
        rate = self._rates.get(key)
        if rate is None:
            exact = hourly_rate(self.prices, usage)
            rate = self._rates[key] = (exact.numerator, exact.denominator)
        num, den = rate[0] * usage.ms, rate[1] * MS_PER_HOUR
        on_demand = _div_half_even(num, den)
        if usage.spot:
            keep_num, keep_den = self._keep
            charged = _div_half_even(num * keep_num, den * keep_den)
        else:
            charged = on_demand
        return Cost(charged, on_demand, usage.gpu * usage.ms)


def total_cost(prices: Prices, usages: Iterable[Usage]) -> Cost:
    """The sum of each attempt's (rounded) cost: what a report over those attempts shows."""
    return sum((attempt_cost(prices, u) for u in usages), Cost())


# -- monthly budgets -----------------------------------------------------------------------------


def month_window(now: float, tz: tzinfo = UTC) -> tuple[float, float]:
    """The calendar month holding ``now`` (epoch seconds) in ``tz``: [its first instant, the next
    month's first instant), as epoch seconds. A budget is spent within one such window."""
    local = datetime.fromtimestamp(now, tz)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start.timestamp(), nxt.timestamp()


class BudgetLevel(StrEnum):
    UNDER = "under"
    WARNING = "warning"
    """At or over ``WARN_PERCENT``: an event and a metric fire (once per month)."""
    OVER = "over"
    """At or over ``HOLD_PERCENT``: the team's new jobs wait."""


def budget_level(spent: int, limit: int | None) -> BudgetLevel:
    """Where ``spent`` stands against a monthly ``limit`` (None: no budget). Exact: no floats."""
    if limit is None:
        return BudgetLevel.UNDER
    if spent * 100 >= limit * HOLD_PERCENT:
        return BudgetLevel.OVER
    if spent * 100 >= limit * WARN_PERCENT:
        return BudgetLevel.WARNING
    return BudgetLevel.UNDER


def crossed(before: int, after: int, limit: int | None) -> tuple[int, ...]:
    """The thresholds (80, 100) that spending from ``before`` to ``after`` passed: each fires once."""
    if limit is None:
        return ()
    return tuple(p for p in THRESHOLDS if before * 100 < limit * p <= after * 100)


def percent_used(spent: int, limit: int) -> Decimal:
    """The share of a budget spent, in percent to a tenth (a zero budget counts as all spent)."""
    if limit <= 0:
        return Decimal(100)
    return (Decimal(spent) * 100 / limit).quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN)


def over_budget_reason(team: str, spent: int, limit: int) -> str:
    """The pending reason of a held job: ``team vision is over its monthly budget ($5,012 of
    $5,000)``; with cents when whole dollars would not show the difference."""
    a, b = format_money(spent, cents=False), format_money(limit, cents=False)
    if a == b and spent != limit:
        a, b = format_money(spent), format_money(limit)
    return f"team {team} is over its monthly budget ({a} of {b})"


def parse_budget(text: str) -> int:
    """Micro-dollars a month from ``5000/month``, ``$5,000/month``, ``5000/mo`` or ``5000``."""
    amount, _, period = text.strip().partition("/")
    if period and period.strip().lower() not in ("month", "mo", "monthly"):
        raise ValueError(f"budget {text!r}: only monthly budgets are supported (5000/month)")
    return parse_money(amount)


@dataclass(frozen=True)
class MonthlyBudget:
    """A team's budget with the clock it is read by (tests give a fake one)."""

    limit: int
    """Micro-dollars a month."""
    tz: tzinfo = UTC
    clock: Callable[[], float] = time.time

    def window(self) -> tuple[float, float]:
        """This month, by the clock."""
        return month_window(self.clock(), self.tz)

    def level(self, spent: int) -> BudgetLevel:
        return budget_level(spent, self.limit)

    def reason(self, team: str, spent: int) -> str | None:
        """The pending reason of the team's new jobs, or None while it is under its budget."""
        if self.level(spent) is not BudgetLevel.OVER:
            return None
        return over_budget_reason(team, spent, self.limit)


# -- usage reports -------------------------------------------------------------------------------

USAGE_DIMENSIONS = ("team", "user", "gpu-type", "spot")
"""What ``yard usage --by`` groups by: team, user, GPU type (``none`` for CPU-only work), and
capacity (``spot`` or ``on-demand``)."""
MAX_SINCE_S = 366 * 86400.0
"""How far back a report may look: a year and a day (the cost of a report grows with its window)."""
_SINCE_RE = re.compile(r"(\d{1,6})([mhdw])")
_SINCE_UNIT = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_dimensions(text: str | None) -> tuple[str, ...]:
    """``user,gpu-type`` as a tuple of known dimensions, each once, in the order given (empty
    text: no grouping). ValueError naming the unknown one."""
    if text is None or not text.strip():
        return ()
    out: list[str] = []
    for part in text.split(","):
        name = part.strip().lower().replace("_", "-")
        if name == "gpu":
            name = "gpu-type"
        if name not in USAGE_DIMENSIONS:
            raise ValueError(f"cannot group by {part.strip()!r} (known: {', '.join(USAGE_DIMENSIONS)})")
        if name in out:
            raise ValueError(f"{name!r} is named twice")
        out.append(name)
    return tuple(out)


def parse_since(text: str, now: float) -> float:
    """The start of a report's window (epoch seconds) from ``30d``, ``12h``, ``90m``, ``2w``,
    ``month`` (the calendar month so far, UTC) or a date ``2026-11-01`` (UTC midnight); ValueError
    for anything else, for a date after ``now``, or for more than ``MAX_SINCE_S`` back."""
    t = text.strip().lower()
    if t == "month":
        return month_window(now)[0]
    m = _SINCE_RE.fullmatch(t)
    if m:
        start = now - int(m.group(1)) * _SINCE_UNIT[m.group(2)]
    else:
        try:
            day = datetime.strptime(t, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise ValueError(f"{text!r} is not a time such as 30d, 12h, month or 2026-11-01") from None
        start = day.timestamp()
        if start > now:
            raise ValueError(f"{text!r} is in the future")
    if now - start > MAX_SINCE_S:
        raise ValueError(f"{text!r} is more than {int(MAX_SINCE_S // 86400)} days back")
    return start


def _key(r: AttemptRecord | UsageGroup, by: tuple[str, ...]) -> tuple[str, ...]:
    """The report group an attempt (or group of them) falls in, by the dimensions ``by``."""
    values = {
        "team": r.team,
        "user": r.user,
        "gpu-type": (r.gpu_type or "any") if r.gpu else "none",
        "spot": "spot" if r.spot else "on-demand",
    }
    return tuple(values[d] for d in by)


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt as a usage report reads it: who ran it, on what, from when to when."""

    team: str
    user: str
    started_at: float
    ended_at: float | None
    """None: still running (it counts up to the report's ``now``)."""
    gpu: int = 0
    gpu_type: str | None = None
    cpu: float | int | str | Decimal = 1
    memory: int = 0
    spot: bool = False

    def key(self, by: tuple[str, ...]) -> tuple[str, ...]:
        return _key(self, by)

    attempts = 1

    def usage(self, now: float, since: float | None = None, until: float | None = None) -> Usage:
        """Its resources and its running time within [``since``, ``until``)."""
        ms = running_ms(self.started_at, self.ended_at, now=now, since=since, until=until)
        return Usage(ms, self.gpu, self.gpu_type, self.cpu, self.memory, self.spot)


@dataclass(frozen=True)
class UsageGroup:
    """Attempts of one team and user with the same resources on the same kind of capacity, summed
    by the database: their running time within the report's window, already clipped to it. A group
    is priced like one attempt of that length (``CostTable``), so it is rounded once: the store sums
    a month of attempts without handing each one to Python."""

    team: str
    user: str
    ms: int
    attempts: int
    gpu: int = 0
    gpu_type: str | None = None
    cpu: float | int | str | Decimal = 1
    memory: int = 0
    spot: bool = False

    def key(self, by: tuple[str, ...]) -> tuple[str, ...]:
        return _key(self, by)

    def usage(self, now: float, since: float | None = None, until: float | None = None) -> Usage:
        """Its resources and running time (the window was applied when it was summed)."""
        return Usage(self.ms, self.gpu, self.gpu_type, self.cpu, self.memory, self.spot)


@dataclass(frozen=True)
class UsageLine:
    """One group of a usage report."""

    key: tuple[str, ...]
    cost: Cost
    attempts: int


def usage_report(
    prices: Prices,
    records: Iterable[AttemptRecord | UsageGroup],
    by: tuple[str, ...],
    *,
    now: float,
    since: float,
    until: float | None = None,
) -> tuple[list[UsageLine], Cost]:
    """Each group's cost over [``since``, ``until`` or ``now``), sorted by cost (highest first, then
    key), and the total: the sum of the same rounded attempt costs, so the lines add up to it."""
    end = now if until is None else until
    table = CostTable(prices)
    groups: dict[tuple[str, ...], tuple[Cost, int]] = {}
    for r in records:
        usage = r.usage(now, since, end)
        if usage.ms <= 0:
            continue
        key = r.key(by)
        cost, n = groups.get(key, (Cost(), 0))
        groups[key] = (cost + table.cost(usage), n + r.attempts)
    lines = [UsageLine(k, c, n) for k, (c, n) in groups.items()]
    lines.sort(key=lambda line: line.key)
    lines.sort(key=lambda line: line.cost.micros, reverse=True)
    return lines, sum((line.cost for line in lines), Cost())


def team_spend(
    prices: Prices, records: Iterable[AttemptRecord | UsageGroup], *, now: float, window: tuple[float, float]
) -> dict[str, int]:
    """What each team spent (charged micro-dollars) within ``window``, running attempts up to ``now``."""
    since, until = window
    table = CostTable(prices)
    out: dict[str, int] = {}
    for r in records:
        usage = r.usage(now, since, until)
        if usage.ms > 0:
            out[r.team] = out.get(r.team, 0) + table.cost(usage).micros
    return out


def month_label(now: float) -> str:
    """``2026-12``: the calendar month (UTC) holding ``now``, as budget alerts are keyed."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


__all__ = [
    "HOLD_PERCENT",
    "MAX_SINCE_S",
    "MICROS",
    "THRESHOLDS",
    "USAGE_DIMENSIONS",
    "WARN_PERCENT",
    "AttemptRecord",
    "BudgetLevel",
    "Cost",
    "CostTable",
    "MonthlyBudget",
    "Prices",
    "Usage",
    "UsageGroup",
    "UsageLine",
    "attempt_cost",
    "budget_level",
    "crossed",
    "dollars",
    "format_money",
    "hourly_rate",
    "month_label",
    "month_window",
    "over_budget_reason",
    "parse_budget",
    "parse_dimensions",
    "parse_fraction",
    "parse_money",
    "parse_since",
    "percent_used",
    "running_ms",
    "team_spend",
    "total_cost",
    "usage_report",
]
