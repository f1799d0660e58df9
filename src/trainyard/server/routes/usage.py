"""Dollar budgets and usage: the usage report, the price table, and letting a job through a team's
monthly budget.

Anyone sees their own team's usage (admins: any team's, or all); only admins set prices or let a
job through. Money is exact: dollars as text (``"2.48"``) and micro-dollars as integers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from trainyard.server.errors import ApiError, invalid, json_object
from trainyard.server.platform import Platform
from trainyard.server.responses import AUTHED, WITH_BODY, errors, json_body
from trainyard.server.routes.deps import TenancyDep, UserDep
from trainyard.server.services.usage import UsageForbidden, UsageRejected, UsageService

router = APIRouter()


async def _usage(request: Request) -> UsageService:
    p: Platform = request.app.state.platform
    return p.usage


UsageDep = Annotated[UsageService, Depends(_usage)]

_MONEY = {"type": ["string", "number"], "description": "dollars, e.g. 2.48"}
PRICES_BODY = json_body(
    {
        "gpu_hour": {
            "type": "object",
            "additionalProperties": _MONEY,
            "description": "per GPU-hour by GPU type, e.g. {a100: 2.48}",
        },
        "gpu_hour_default": {**_MONEY, "description": "per GPU-hour of a type not listed"},
        "cpu_hour": {**_MONEY, "description": "per core-hour"},
        "gib_hour": {**_MONEY, "description": "per GiB-hour of memory"},
        "spot_discount": {"type": ["string", "number"], "description": "share off on spot: 0.6 or 60%"},
    }
)


def _answer(e: UsageRejected | UsageForbidden) -> ApiError:
    if isinstance(e, UsageForbidden):
        return ApiError(403, "forbidden", str(e))
    return invalid(str(e), e.field, str(e))


@router.get(
    "/v1/usage",
    tags=["usage"],
    summary="GPU-hours, cost and what spot saved, grouped; each team's monthly budget",
    responses=errors(*AUTHED, 403),
)
async def usage(
    user: UserDep,
    svc: UsageDep,
    team: Annotated[str | None, Query(max_length=64, description="default: yours (admins: all)")] = None,
    by: Annotated[str | None, Query(max_length=100, description="team, user, gpu-type, spot")] = None,
    since: Annotated[
        str | None, Query(max_length=32, description="30d, 12h, month (default) or 2026-11-01")
    ] = None,
) -> dict[str, Any]:
    """Every attempt that ran since ``since`` (running ones up to now; preempted, lost and failed
    work included) costed at the admin's prices, grouped ``by``; and, for each team in view with a
    budget, what it spent of it this calendar month (UTC)."""
    try:
        return await svc.report(user, team=team, by=by, since=since)
    except (UsageRejected, UsageForbidden) as e:
        raise _answer(e) from None


@router.get("/v1/prices", tags=["usage"], summary="The price table", responses=errors(*AUTHED))
async def get_prices(user: UserDep, svc: UsageDep) -> dict[str, Any]:
    """What an hour of each resource costs on demand, and the spot discount (all 0 until set)."""
    return await svc.prices()


@router.put(
    "/v1/admin/prices",
    tags=["admin"],
    summary="Replace the price table (admin)",
    responses=errors(*WITH_BODY, 403),
    openapi_extra=PRICES_BODY,
)
async def set_prices(request: Request, user: UserDep, svc: UsageDep, tenancy: TenancyDep) -> dict[str, Any]:
    """The whole table at once: a field left out costs 0. Applies to every report from now on,
    past attempts included (a cost is computed when read, never stored)."""
    if not user.is_admin:
        raise ApiError(403, "forbidden", "only admins can set prices")
    body = await json_object(request)
    try:
        answer = await svc.set_prices(user, body)
    except (UsageRejected, UsageForbidden) as e:
        raise _answer(e) from None
    await tenancy.audit(user, "prices.set", "prices", None, answer["prices"])
    return answer


@router.post(
    "/v1/admin/jobs/{job_id}/allow-over-budget",
    tags=["admin"],
    summary="Let a job start although its team is over its monthly budget (admin)",
    responses=errors(*AUTHED, 403, 404),
)
async def allow_over_budget(job_id: str, user: UserDep, svc: UsageDep, tenancy: TenancyDep) -> dict[str, Any]:
    """The job (an array: every task of it) is scheduled as if its team were under its budget;
    the team's other jobs still wait. Idempotent."""
    if not user.is_admin:
        raise ApiError(403, "forbidden", "only admins can let a job through a team's budget")
    if len(job_id) > 32:
        raise ApiError(404, "not_found", f"no job {job_id[:40]!r}")
    try:
        team = await svc.allow_over_budget(user, job_id)
    except UsageForbidden as e:
        raise _answer(e) from None
    await tenancy.audit(user, "job.allow-over-budget", job_id, team, {})
    return {"job": job_id, "team": team, "allowed_over_budget": True}
