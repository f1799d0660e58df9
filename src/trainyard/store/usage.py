"""Budgets and usage: the admin's prices, what attempts ran (for their cost), the budget alerts that
fired, and the jobs an admin let through a team's budget.

Owns the ``prices``, ``budget_alerts`` and ``budget_overrides`` tables; reads ``job_attempts``,
``jobs`` and ``workers``. The arithmetic is ``model/pricing.py``'s; this module only fetches.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa

from trainyard.model.pricing import AttemptRecord, Prices, UsageGroup
from trainyard.model.states import LIVE
from trainyard.store.db import Db
from trainyard.store.errors import NotFound
from trainyard.store.schema import (
    audit_log,
    budget_alerts,
    budget_overrides,
    job_attempts,
    jobs,
    prices,
    workers,
)
from trainyard.store.transitions import record_event

_PRICES_ROW = 1
_LIVE_NAMES = frozenset(s.value for s in LIVE)
BUDGET_EVENTS = {80: "budget.warning", 100: "budget.exceeded"}
"""The event type of each threshold a team's monthly spending crosses."""


@dataclass(frozen=True)
class StoredPrices:
    prices: Prices
    updated_at: float
    updated_by: str


class UsageRepo:
    """Prices, the attempts a usage report or a budget counts, alerts and overrides."""

    def __init__(self, db: Db) -> None:
        self._db = db

    # ---- prices --------------------------------------------------------------------------------
    def get_prices(self) -> StoredPrices | None:
        """The admin's prices, or None while none were set (everything costs 0)."""
        with self._db.read() as conn:
            row = conn.execute(sa.select(prices).where(prices.c.id == _PRICES_ROW)).first()
        if row is None:
            return None
        return StoredPrices(Prices.from_settings(row.settings), row.updated_at, row.updated_by)

    def set_prices(self, new: Prices, actor: str) -> StoredPrices:
        """Replace the prices (one row; the last writer wins)."""
        now = self._db.clock()
        values = {"settings": new.to_settings(), "updated_at": now, "updated_by": actor}
        with self._db.tx() as conn:
            if conn.execute(prices.update().where(prices.c.id == _PRICES_ROW).values(**values)).rowcount == 0:
                conn.execute(prices.insert().values(id=_PRICES_ROW, **values))
        return StoredPrices(new, now, actor)

    # ---- attempts ------------------------------------------------------------------------------
    def attempts_between(
        self,
        since: float,
        until: float,
        *,
        teams: Collection[str] | None = None,
        open_after: float | None = None,
    ) -> list[AttemptRecord]:
        """Every attempt that ran at some time in [``since``, ``until``), of these teams (None:
        all), preempted, lost and failed ones included. A gang's ranks are attempts of their own;
        an array's tasks too. The GPU type and spot are the worker's: what the attempt ran on.
        ``open_after``: only attempts still open or that ended at or after it (the budget watch
        keeps the sum of those that ended before)."""
        if teams is not None and not teams:
            return []
        a = job_attempts.c
        q = (
            sa.select(
                jobs.c.team,
                jobs.c.user_name,
                jobs.c.cpu,
                jobs.c.memory,
                jobs.c.gpu,
                jobs.c.gpu_type,
                a.status,
                a.started_at,
                a.finished_at,
                a.worker_id,
            )
            .select_from(job_attempts.join(jobs, jobs.c.id == a.job_id))
            .where(a.started_at.is_not(None), a.started_at < until)
            .where(sa.or_(a.finished_at.is_(None), a.finished_at > since))
        )
        if open_after is not None:
            q = q.where(sa.or_(a.finished_at.is_(None), a.finished_at >= open_after))
        if teams is not None:
            q = q.where(jobs.c.team.in_(sorted(teams)))
        with self._db.read() as conn:
            hosts = _hosts(conn)
            rows = conn.execute(q).all()
        out = []
        unknown: tuple[str | None, bool] = (None, False)
        for team, user, cpu, memory, gpu, gpu_type, status, started, finished, worker_id in rows:
            host_type, spot = hosts.get(worker_id, unknown)
            if finished is None and status not in _LIVE_NAMES:
                # Closed without an end time (it never reported one): nothing counts past its start.
                finished = started
            out.append(
                AttemptRecord(
                    team,
                    user,
                    started,
                    finished,
                    gpu,
                    (host_type or gpu_type) if gpu else None,
                    cpu,
                    memory,
                    spot,
                )
            )
        return out

    def usage_groups(
        self,
        since: float,
        until: float,
        *,
        now: float,
        teams: Collection[str] | None = None,
        open_after: float | None = None,
        ended_before: float | None = None,
    ) -> list[UsageGroup]:
        """What ``attempts_between`` lists, summed by the database: each team's and user's running
        time within [``since``, ``until``) (an open attempt up to ``now``) per resource shape and
        kind of capacity. ``open_after``: only attempts open or that ended at or after it;
        ``ended_before``: only attempts that ended before it (the budget watch's settled part)."""
        if teams is not None and not teams:
            return []
        a = job_attempts.c
        end = sa.case(
            (a.finished_at.is_not(None), a.finished_at),
            (a.status.in_(sorted(_LIVE_NAMES)), sa.literal(now, sa.Float)),
            else_=a.started_at,  # closed without an end time: nothing counts past its start
        )
        clipped_end = sa.case((end > until, sa.literal(until, sa.Float)), else_=end)
        clipped_start = sa.case((a.started_at < since, sa.literal(since, sa.Float)), else_=a.started_at)
        ran = clipped_end - clipped_start
        shape = (
            jobs.c.team,
            jobs.c.user_name,
            a.worker_id,
            jobs.c.gpu,
            jobs.c.gpu_type,
            jobs.c.cpu,
            jobs.c.memory,
        )
        q = (
            sa.select(
                *shape,
                sa.func.sum(sa.case((ran > 0, ran), else_=0.0)).label("seconds"),
                sa.func.sum(sa.case((ran > 0, 1), else_=0)).label("attempts"),
            )
            .select_from(job_attempts.join(jobs, jobs.c.id == a.job_id))
            .where(a.started_at.is_not(None), a.started_at < until)
            .group_by(*shape)
        )
        if open_after is not None and open_after > since:
            # The one condition on when attempts ended, so the planner walks the finished_at index
            # (NULL: open) rather than every attempt: the budget watch asks this every 5 s.
            q = q.where(sa.or_(a.finished_at.is_(None), a.finished_at >= open_after))
        else:
            q = q.where(sa.or_(a.finished_at.is_(None), a.finished_at > since))
            if open_after is not None:
                q = q.where(sa.or_(a.finished_at.is_(None), a.finished_at >= open_after))
        if ended_before is not None:
            q = q.where(a.finished_at < ended_before)
        if teams is not None and open_after is None:
            # A filter on the team would make SQLite start from the team's every job; for the few
            # open or recent attempts the team is checked below instead.
            q = q.where(jobs.c.team.in_(sorted(teams)))
        with self._db.read() as conn:
            hosts = _hosts(conn)
            rows = conn.execute(q).all()
        merged: dict[tuple[str, str, int, str | None, float, int, bool], list[float]] = {}
        unknown: tuple[str | None, bool] = (None, False)
        for team, user, worker_id, gpu, gpu_type, cpu, memory, seconds, attempts in rows:
            if not attempts or (teams is not None and team not in teams):
                continue
            host_type, spot = hosts.get(worker_id, unknown)
            key = (
                str(team),
                str(user),
                int(gpu),
                (host_type or gpu_type) if gpu else None,
                cpu,
                memory,
                spot,
            )
            acc = merged.setdefault(key, [0.0, 0.0])
            acc[0] += float(seconds)
            acc[1] += int(attempts)
        return [
            UsageGroup(team, user, round(seconds * 1000), int(n), gpu, gpu_type, cpu, memory, spot)
            for (team, user, gpu, gpu_type, cpu, memory, spot), (seconds, n) in merged.items()
        ]

    # ---- alerts --------------------------------------------------------------------------------
    def fired_alerts(self, month: str) -> set[tuple[str, int]]:
        """(team, percent) of every budget threshold crossed in ``month`` (``2026-12``)."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(budget_alerts.c.team, budget_alerts.c.percent).where(budget_alerts.c.month == month)
            )
            return {(r.team, r.percent) for r in rows}

    def fire_alert(self, team: str, month: str, percent: int, spent: int, budget: int) -> bool:
        """Record that ``team`` crossed ``percent`` of its budget in ``month``, with its event (on
        the outbox, so the bus gets it) and an audit entry, in one transaction; False, and nothing
        written, when that alert had fired already (another leader, an earlier cycle)."""
        now = self._db.clock()
        details = {"month": month, "percent": percent, "spent_micros": spent, "budget_micros": budget}
        with self._db.tx() as conn:
            exists = conn.execute(
                sa.select(budget_alerts.c.team).where(
                    budget_alerts.c.team == team,
                    budget_alerts.c.month == month,
                    budget_alerts.c.percent == percent,
                )
            ).first()
            if exists is not None:
                return False
            conn.execute(
                budget_alerts.insert().values(
                    team=team, month=month, percent=percent, at=now, spent=spent, budget=budget
                )
            )
            # A team event, not a job's: its key names the month, so a consumer keeps one per team
            # and month; the event's team is what /v1/events filters by.
            record_event(
                conn,
                job_id=f"budget-{month}",
                team=team,
                type_=BUDGET_EVENTS[percent],
                src=None,
                dst=None,
                attempt=0,
                data=details,
                now=now,
            )
            conn.execute(
                audit_log.insert().values(
                    at=now,
                    actor="system",
                    action=BUDGET_EVENTS[percent],
                    target=team,
                    team=team,
                    details=details,
                )
            )
        return True

    # ---- overrides -----------------------------------------------------------------------------
    def allow_over_budget(self, job_id: str, actor: str) -> str:
        """Let the job (an array: each of its tasks) start although its team is over its budget;
        returns its team. NotFound when there is no such job. Idempotent."""
        now = self._db.clock()
        with self._db.tx() as conn:
            team = conn.execute(sa.select(jobs.c.team).where(jobs.c.id == job_id)).scalar()
            if team is None:
                raise NotFound(job_id)
            done = conn.execute(
                sa.select(budget_overrides.c.job_id).where(budget_overrides.c.job_id == job_id)
            ).first()
            if done is None:
                conn.execute(budget_overrides.insert().values(job_id=job_id, team=team, actor=actor, at=now))
        return str(team)

    def budget_overrides(self, teams: Collection[str]) -> frozenset[str]:
        """The ids an admin let through, of jobs of these teams."""
        if not teams:
            return frozenset()
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(budget_overrides.c.job_id).where(budget_overrides.c.team.in_(sorted(teams)))
            )
            return frozenset(rows.scalars())


def _hosts(conn: sa.Connection) -> dict[str, tuple[str | None, bool]]:
    """Each worker's GPU type and whether it is spot capacity. Workers are few and attempts many:
    read once, not joined (and their JSON labels decoded) per attempt."""
    return {
        w.id: (w.gpu_type, (w.labels or {}).get("spot") == "true")
        for w in conn.execute(sa.select(workers.c.id, workers.c.gpu_type, workers.c.labels))
    }
