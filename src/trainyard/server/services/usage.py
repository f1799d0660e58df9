"""Dollar budgets and usage: the admin's prices, usage reports, and the leader's budget watch.

The arithmetic is ``model/pricing.py``'s (pure, exact micro-dollars); the store only fetches
attempts. ``BudgetWatch`` is the leader's: every few seconds it sums each budgeted team's spending
this calendar month (UTC), fires the 80 % and 100 % alerts once a month (event, audit entry,
metric), and hands the scheduler the teams whose new jobs must wait.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from trainyard.model.pricing import (
    THRESHOLDS,
    BudgetLevel,
    Cost,
    Prices,
    budget_level,
    dollars,
    month_label,
    month_window,
    over_budget_reason,
    parse_dimensions,
    parse_since,
    percent_used,
    team_spend,
    usage_report,
)
from trainyard.model.records import User
from trainyard.model.team import TEAM_NAME
from trainyard.server.hub import Kick
from trainyard.server.metrics import Metrics
from trainyard.server.services.blocking import off_loop
from trainyard.server.views import iso

if TYPE_CHECKING:
    from trainyard.store.ports import UsageStore

log = logging.getLogger("trainyard.server")

BUDGET_EVERY_S = 5.0
"""How often the leader sums the budgeted teams' spending: it moves by cents a second at most, so
once a cycle would be waste."""
SETTLE_S = 60.0
"""An attempt that ended this long ago is final: its cost joins the month's running sum and it is
not read again. (An attempt's end is stamped when its report commits, so a report whose commit
lagged its stamp by more than this would be missed until the next full read.)"""
FULL_EVERY_S = 900.0
"""The month is read whole at least this often, and whenever the month, the prices or the set of
budgeted teams changed."""


@dataclass(frozen=True)
class _MonthSums:
    """The leader's running sum: each team's spending this month on attempts that ended before
    ``settled`` (read once), so each recompute reads only the attempts still open or just ended."""

    key: tuple[object, ...]
    settled: float
    closed: dict[str, int]
    full_at: float


class UsageRejected(ValueError):
    """A usage query or price change that cannot be answered: ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UsageForbidden(PermissionError):
    """The caller may not see (or change) this."""


@dataclass(frozen=True)
class BudgetHolds:
    """What the scheduler's snapshot gets: over-budget teams with their reason, and exempt jobs."""

    over_budget: dict[str, str] = field(default_factory=dict)
    exempt: frozenset[str] = frozenset()


def _money(micros: int) -> str:
    return dollars(micros)


def cost_json(cost: Cost, attempts: int) -> dict[str, Any]:
    """A cost as the API shows it: exact dollars as text, and micro-dollars as integers."""
    return {
        "attempts": attempts,
        "gpu_hours": str(cost.gpu_hours),
        "cost": _money(cost.micros),
        "on_demand_cost": _money(cost.on_demand_micros),
        "spot_saved": _money(cost.saved_micros),
        "cost_micros": cost.micros,
        "spot_saved_micros": cost.saved_micros,
    }


def budget_json(team: str, limit: int, spent: int, now: float) -> dict[str, Any]:
    """A team's monthly budget and what it spent of it this month."""
    return {
        "team": team,
        "month": month_label(now),
        "monthly_budget": _money(limit),
        "spent": _money(spent),
        "spent_micros": spent,
        "monthly_budget_micros": limit,
        "percent": str(percent_used(spent, limit)),
        "level": budget_level(spent, limit).value,
    }


def _prices_of(store: UsageStore) -> Prices:
    stored = store.usage.get_prices()
    return Prices() if stored is None else stored.prices


class BudgetWatch:
    """The leader's view of budgets, recomputed at most every ``every_s``; the scheduler's thread
    calls ``holds`` each cycle."""

    def __init__(
        self,
        store: UsageStore,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        every_s: float = BUDGET_EVERY_S,
        background: bool = False,
    ) -> None:
        self.store = store
        self.clock = clock
        self.every_s = every_s
        self.background = background
        """Recompute in a thread of its own and answer with the last result meanwhile (the control
        plane): a month read whole takes seconds at 100,000 attempts, and the scheduler's cycle must
        not wait for it. Tests recompute in the caller, by their fake clock."""
        self._refreshing = False
        self._dirty = False
        self._generation = 0
        self._lock = threading.Lock()
        self._at: float | None = None
        self._holds = BudgetHolds()
        self._sums: _MonthSums | None = None
        self.full_reads = 0
        """How many recomputes read the whole month (the bench and tests look)."""
        self._gauged: set[str] = set()
        r = metrics.registry
        self.used_ratio = Gauge(
            "trainyard_team_budget_used_ratio",
            "Share of its monthly budget a team spent this calendar month (UTC), on the leader",
            ["team"],
            registry=r,
        )
        self.alerts = Counter(
            "trainyard_team_budget_alerts",
            "Budget thresholds (80, 100 percent) teams crossed, counted when the alert fired",
            ["team", "percent"],
            registry=r,
        )

    def invalidate(self) -> None:
        """Recompute at the next ``holds`` (a budget, a price or an override changed here; a
        recompute already under way finishes with what it read)."""
        with self._lock:
            # The running sums stay: they are read whole again only when the month, the prices or
            # the set of budgeted teams changed (their key), not for a new limit or an override.
            self._at = None
            self._dirty = True
            self._generation += 1

    def holds(self, now: float | None = None) -> BudgetHolds:
        """The over-budget teams and exempt jobs, recomputed when ``every_s`` has passed."""
        t = self.clock() if now is None else now
        with self._lock:
            # A clock that went back (a test's, a new month set by hand) recomputes too.
            if self._at is not None and 0 <= t - self._at < self.every_s:
                return self._holds
            # A change made here (a budget, an override) applies to the very next cycle: computed
            # in the caller, from the running sums (a full read only if prices or teams changed).
            if not self.background or self._dirty:
                self._holds = self._compute(t)
                self._at, self._dirty = t, False
                return self._holds
            if not self._refreshing:
                self._refreshing = True
                args = (t, self._generation)
                threading.Thread(target=self._refresh, args=args, name="budget-watch", daemon=True).start()
            return self._holds

    def _refresh(self, t: float, generation: int) -> None:
        try:
            holds = self._compute(t)
        except Exception:  # the store is down: keep the last answer, try again at the next cycle
            log.exception("cannot sum the teams' spending against their budgets")
            holds = None
        with self._lock:
            self._refreshing = False
            # A change since this refresh began makes its answer stale: the next cycle computes anew.
            if holds is not None and generation == self._generation:
                self._holds, self._at = holds, t

    def _compute(self, now: float) -> BudgetHolds:
        budgeted = {t.name: t.monthly_budget for t in self.store.list_teams() if t.monthly_budget is not None}
        for gone in self._gauged - set(budgeted):
            self.used_ratio.remove(gone)
        self._gauged = set(budgeted)
        if not budgeted:
            return BudgetHolds()
        prices = _prices_of(self.store)
        spent = self._spend(prices, budgeted, now)
        month = month_label(now)
        fired = self.store.usage.fired_alerts(month)
        over: dict[str, str] = {}
        for team, limit in sorted(budgeted.items()):
            assert limit is not None
            used = spent.get(team, 0)
            self.used_ratio.labels(team).set(used / limit if limit > 0 else 1.0)
            for percent in THRESHOLDS:
                due = used * 100 >= limit * percent and (team, percent) not in fired
                if due and self.store.usage.fire_alert(team, month, percent, used, limit):
                    self.alerts.labels(team, str(percent)).inc()
                    log.warning(
                        "team %s spent %s%% of its monthly budget (%s of %s)",
                        team,
                        percent_used(used, limit),
                        dollars(used),
                        dollars(limit),
                    )
            if budget_level(used, limit) is BudgetLevel.OVER:
                over[team] = over_budget_reason(team, used, limit)
        exempt = self.store.usage.budget_overrides(over) if over else frozenset()
        return BudgetHolds(over, exempt)

    def _spend(self, prices: Prices, budgeted: Collection[str], now: float) -> dict[str, int]:
        """Each budgeted team's spending this month: the settled sum plus what is open or just ended."""
        window = month_window(now)
        settings = prices.to_settings()
        key = (month_label(now), json.dumps(settings, sort_keys=True), tuple(sorted(budgeted)))
        s = self._sums
        full = s is None or s.key != key or now - s.full_at >= FULL_EVERY_S or now < s.settled
        if full or s is None:
            closed: dict[str, int] = {}
            settled_before: float | None = None
            full_at = now
            self.full_reads += 1
        else:
            closed, settled_before, full_at = dict(s.closed), s.settled, s.full_at
        settle = now - SETTLE_S
        teams = set(budgeted)
        groups = self.store.usage.usage_groups  # summed by the database: no attempt comes to Python
        # Attempts that ended since the last settling point (all of the month's, on a full read) are
        # final: they join the settled sum. Open and just-ended ones are summed afresh each time.
        ended = groups(*window, now=now, teams=teams, open_after=settled_before, ended_before=settle)
        for team, micros in team_spend(prices, ended, now=now, window=window).items():
            closed[team] = closed.get(team, 0) + micros
        spent = dict(closed)
        fresh = groups(*window, now=now, teams=teams, open_after=settle)
        for team, micros in team_spend(prices, fresh, now=now, window=window).items():
            spent[team] = spent.get(team, 0) + micros
        self._sums = _MonthSums(key, settle, closed, full_at)
        return spent


class UsageService:
    """Usage reports, prices and budget overrides, for the REST routes."""

    def __init__(
        self,
        store: UsageStore,
        watch: BudgetWatch,
        kick_scheduler: Kick,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.watch = watch
        self.kick_scheduler = kick_scheduler
        self.clock = clock

    # ---- reports ---------------------------------------------------------------------------------
    def _scope(self, user: User, team: str | None) -> str | None:
        """The team a report covers (None: every team, for admins only)."""
        if team is not None and not TEAM_NAME.fullmatch(team):
            raise UsageRejected("team", f"{team!r} is not a team name")
        if user.is_admin:
            return team
        if team is not None and team != user.team:
            raise UsageForbidden(f"you may see the usage of team {user.team!r} only")
        return user.team

    async def report(
        self, user: User, *, team: str | None, by: str | None, since: str | None
    ) -> dict[str, Any]:
        """GET /v1/usage: GPU-hours, cost and what spot saved, grouped ``by``, since ``since``
        (default: this calendar month), for the caller's team (admins: any team, or all)."""
        scope = self._scope(user, team)
        now = self.clock()
        try:
            dims = parse_dimensions(by)
        except ValueError as e:
            raise UsageRejected("by", str(e)) from None
        try:
            start = parse_since(since or "month", now)
        except ValueError as e:
            raise UsageRejected("since", str(e)) from None
        return await off_loop(self._report, scope, dims, start, now)

    def _report(self, scope: str | None, by: tuple[str, ...], since: float, now: float) -> dict[str, Any]:
        stored = self.store.usage.get_prices()
        prices = Prices() if stored is None else stored.prices
        teams = None if scope is None else {scope}
        records = self.store.usage.usage_groups(since, now, now=now, teams=teams)
        lines, total = usage_report(prices, records, by, now=now, since=since)
        budgets = self._budgets(prices, scope, now)
        return {
            "team": scope,
            "by": list(by),
            "since": iso(since),
            "until": iso(now),
            "currency": "USD",
            "prices_set": stored is not None,
            "groups": [
                {**dict(zip(by, line.key, strict=True)), **cost_json(line.cost, line.attempts)}
                for line in lines
            ],
            "total": cost_json(total, sum(line.attempts for line in lines)),
            "budgets": budgets,
        }

    def _budgets(self, prices: Prices, scope: str | None, now: float) -> list[dict[str, Any]]:
        budgeted = {
            t.name: t.monthly_budget
            for t in self.store.list_teams()
            if t.monthly_budget is not None and (scope is None or t.name == scope)
        }
        if not budgeted:
            return []
        window = month_window(now)
        groups = self.store.usage.usage_groups(*window, now=now, teams=set(budgeted))
        spent = team_spend(prices, groups, now=now, window=window)
        return [
            budget_json(name, limit, spent.get(name, 0), now)
            for name, limit in sorted(budgeted.items())
            if limit is not None
        ]

    # ---- prices ----------------------------------------------------------------------------------
    async def prices(self) -> dict[str, Any]:
        """The prices as set (all zero until an admin sets them)."""
        stored = await off_loop(self.store.usage.get_prices)
        if stored is None:
            return {"prices": Prices().to_settings(), "updated_at": None, "updated_by": None}
        return {
            "prices": stored.prices.to_settings(),
            "updated_at": iso(stored.updated_at),
            "updated_by": stored.updated_by,
        }

    async def set_prices(self, user: User, settings: dict[str, Any]) -> dict[str, Any]:
        """Replace the prices (admins): the whole table, as ``Prices.from_settings`` reads it."""
        if not user.is_admin:
            raise UsageForbidden("only admins can set prices")
        try:
            new = Prices.from_settings(settings)
        except ValueError as e:
            raise UsageRejected("prices", str(e)) from None
        await off_loop(self.store.usage.set_prices, new, user.name)
        self.watch.invalidate()
        self.kick_scheduler.set()
        return await self.prices()

    # ---- overrides -------------------------------------------------------------------------------
    async def allow_over_budget(self, user: User, job_id: str) -> str:
        """Let one job (an array: all its tasks) start although its team is over its budget
        (admins). Returns the job's team; ``NotFound`` when there is no such job."""
        if not user.is_admin:
            raise UsageForbidden("only admins can let a job through a team's budget")
        team = await off_loop(self.store.usage.allow_over_budget, job_id, user.name)
        self.watch.invalidate()
        self.kick_scheduler.set()
        return team

    def budget_changed(self) -> None:
        """A team's budget changed here: the next cycle applies it, not one ``BUDGET_EVERY_S`` on."""
        self.watch.invalidate()
