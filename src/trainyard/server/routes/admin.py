"""Administration: draining workers, teams (weight and quotas) and users."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from trainyard.model.team import TEAM_NAME, TeamUpdate
from trainyard.server.bodies import DrainBody, NewUser, validate
from trainyard.server.errors import ApiError, field_errors, json_object
from trainyard.server.responses import AUTHED, DRAIN_BODY, TEAM_BODY, USER_BODY, WITH_BODY, errors
from trainyard.server.routes.deps import AuthDep, FleetDep, TenancyDep, UserDep
from trainyard.server.views import iso, team_json, worker_json

router = APIRouter()


@router.post(
    "/v1/admin/workers/{worker}/drain",
    tags=["admin"],
    summary="Drain a worker (id or name): no new work; its jobs are preempted at the deadline (admin)",
    responses=errors(*WITH_BODY, 403, 404),
    openapi_extra=DRAIN_BODY,
)
async def drain_worker(
    worker: str, request: Request, user: UserDep, fleet: FleetDep, tenancy: TenancyDep
) -> dict[str, Any]:
    """The worker takes no new work; its running jobs are preempted (checkpointed and requeued,
    without using a retry) once ``deadline`` has passed (default: at once)."""
    if not user.is_admin:
        raise ApiError(403, "forbidden", "only admins can drain workers")
    body = validate(DrainBody, await json_object(request, empty_ok=True), "invalid deadline")
    w = await fleet.drain(worker, body.deadline)
    if w is None:
        raise ApiError(404, "not_found", f"no live worker {worker!r}")
    await tenancy.audit(user, "worker.drain", w.id, None, {"name": w.name, "deadline": iso(w.drain_deadline)})
    return {**worker_json(w, (0.0, 0, 0), 0, True), "drain_deadline": iso(w.drain_deadline)}


@router.get(
    "/v1/teams", tags=["fleet"], summary="Teams: fair-share weight and quotas", responses=errors(*AUTHED)
)
async def list_teams(user: UserDep, tenancy: TenancyDep) -> dict[str, Any]:
    """Every team with its fair-share weight and quotas."""
    return {"teams": [team_json(t) for t in await tenancy.list_teams()]}


@router.put(
    "/v1/admin/teams/{name}",
    tags=["admin"],
    summary="Create or change a team (admin)",
    responses=errors(*WITH_BODY, 403),
    openapi_extra=TEAM_BODY,
)
async def set_team(name: str, request: Request, user: UserDep, tenancy: TenancyDep) -> dict[str, Any]:
    """Create a team or change the fields the body names (weight, quotas); the scheduler applies it
    from its next cycle."""
    if not user.is_admin:
        raise ApiError(403, "forbidden", "only admins can change teams")
    if not TEAM_NAME.fullmatch(name):
        raise ApiError(422, "invalid_request", f"{name!r} is not a team name")
    body = await json_object(request, empty_ok=True)
    try:
        update = TeamUpdate.model_validate(body)
    except ValidationError as e:
        raise ApiError(422, "invalid_request", "the team is not valid", field_errors(e)) from None
    except ArithmeticError:  # memory_quota "9…9": parse_memory overflows
        raise ApiError(422, "invalid_request", "the team is not valid: a number is out of range") from None
    team = await tenancy.set_team(name, update.changes())
    await tenancy.audit(user, "team.set", name, name, body)
    return team_json(team)


@router.post(
    "/v1/admin/users",
    status_code=201,
    tags=["admin"],
    summary="Create a user and return a token",
    responses=errors(*WITH_BODY, 403),
    openapi_extra=USER_BODY,
)
async def create_user(request: Request, user: UserDep, auth: AuthDep, tenancy: TenancyDep) -> dict[str, Any]:
    """Create a user (admins: any; team admins: of their own team, up to team-admin) and return
    their first API token, shown only here."""
    if not user.is_admin and user.role != "team-admin":
        raise ApiError(403, "forbidden", "only admins and team admins can create users")
    body = await json_object(request)
    new = validate(NewUser, body, "the user is not valid", context={"tiers": tenancy.tiers})
    if not user.is_admin:
        # A team admin adds people to their own team, up to their own role, and cannot take
        # over (or demote) someone of another team by reusing the name.
        existing = await auth.get_user(new.name)
        if (
            new.team != user.team
            or new.role == "admin"
            or (existing is not None and existing.team != user.team)
        ):
            raise ApiError(
                403, "forbidden", f"team admins create users of team {user.team!r} only, up to team-admin"
            )
        if existing is not None and existing.rank > user.rank:
            raise ApiError(403, "forbidden", f"{new.name!r} is an admin")
    token = await auth.create_user(new.name, new.team, new.role, new.tier)
    await tenancy.audit(user, "user.create", new.name, new.team, {"role": new.role, "tier": new.tier})
    return {"name": new.name, "team": new.team, "role": new.role, "tier": new.tier, "token": token}
