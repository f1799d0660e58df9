"""Administration: draining workers, teams (weight and quotas) and users."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from trainyard.model.quantity import parse_duration
from trainyard.model.records import ROLES
from trainyard.model.team import TEAM_NAME, TeamUpdate
from trainyard.server.errors import ApiError, field_errors, json_object
from trainyard.server.responses import AUTHED, DRAIN_BODY, TEAM_BODY, USER_BODY, WITH_BODY, errors
from trainyard.server.routes.deps import PlatformDep, UserDep
from trainyard.server.views import iso, team_json, worker_json

router = APIRouter()


@router.post(
    "/v1/admin/workers/{worker}/drain",
    tags=["admin"],
    summary="Drain a worker (id or name): no new work; its jobs are preempted at the deadline (admin)",
    responses=errors(*WITH_BODY, 403, 404),
    openapi_extra=DRAIN_BODY,
)
async def drain_worker(worker: str, request: Request, user: UserDep, p: PlatformDep) -> dict[str, Any]:
    if not user.is_admin:
        raise ApiError(403, "forbidden", "only admins can drain workers")
    body = await json_object(request, empty_ok=True)
    try:
        deadline = parse_duration(body.get("deadline") or 0)
    except ValueError as e:
        raise ApiError(
            422, "invalid_request", "invalid deadline", [{"field": "deadline", "message": str(e)}]
        ) from None
    w = await p.drain(worker, deadline)
    if w is None:
        raise ApiError(404, "not_found", f"no live worker {worker!r}")
    await p.audit(user, "worker.drain", w.id, None, {"name": w.name, "deadline": iso(w.drain_deadline)})
    return {**worker_json(w, (0.0, 0, 0), 0, True), "drain_deadline": iso(w.drain_deadline)}


@router.get(
    "/v1/teams", tags=["fleet"], summary="Teams: fair-share weight and quotas", responses=errors(*AUTHED)
)
async def list_teams(user: UserDep, p: PlatformDep) -> dict[str, Any]:
    return {"teams": [team_json(t) for t in await p.db(p.store.list_teams)]}


@router.put(
    "/v1/admin/teams/{name}",
    tags=["admin"],
    summary="Create or change a team (admin)",
    responses=errors(*WITH_BODY, 403),
    openapi_extra=TEAM_BODY,
)
async def set_team(name: str, request: Request, user: UserDep, p: PlatformDep) -> dict[str, Any]:
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
    team = await p.db(p.store.set_team, name, update.changes())
    p.kick_scheduler.set()  # a raised quota may let jobs run now
    await p.audit(user, "team.set", name, name, body)
    return team_json(team)


@router.post(
    "/v1/admin/users",
    status_code=201,
    tags=["admin"],
    summary="Create a user and return a token",
    responses=errors(*WITH_BODY, 403),
    openapi_extra=USER_BODY,
)
async def create_user(request: Request, user: UserDep, p: PlatformDep) -> dict[str, Any]:
    if not user.is_admin and user.role != "team-admin":
        raise ApiError(403, "forbidden", "only admins and team admins can create users")
    body = await json_object(request)
    details = []
    name, team, role = body.get("name"), body.get("team"), body.get("role", "user")
    tier = body.get("tier")
    if tier is not None and (not isinstance(tier, str) or tier not in p.tiers):
        known = ", ".join(sorted(p.tiers))
        details.append({"field": "tier", "message": f"unknown tier {tier!r}; configured: {known}"})
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", name):
        details.append({"field": "name", "message": "must be a lowercase name (letters, digits, . _ -)"})
    if not isinstance(team, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", team):
        details.append({"field": "team", "message": "must be a lowercase team label"})
    if role not in ROLES:
        details.append({"field": "role", "message": f"must be one of {', '.join(ROLES)}"})
    if details:
        raise ApiError(422, "invalid_request", "the user is not valid", details)
    assert isinstance(name, str) and isinstance(team, str) and isinstance(role, str)
    if not user.is_admin:
        # A team admin adds people to their own team, up to their own role, and cannot take
        # over (or demote) someone of another team by reusing the name.
        existing = await p.db(p.store.get_user, name)
        if team != user.team or role == "admin" or (existing is not None and existing.team != user.team):
            raise ApiError(
                403, "forbidden", f"team admins create users of team {user.team!r} only, up to team-admin"
            )
        if existing is not None and existing.rank > user.rank:
            raise ApiError(403, "forbidden", f"{name!r} is an admin")
    token = await p.db(p.store.create_user, name, team, role, tier)
    await p.audit(user, "user.create", name, team, {"role": role, "tier": tier})
    return {"name": name, "team": team, "role": role, "tier": tier, "token": token}
