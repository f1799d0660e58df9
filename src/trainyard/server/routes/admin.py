"""Administration: draining workers, teams (weight and quotas), users, and retention's prune."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from trainyard.model.quantity import parse_duration
from trainyard.model.team import TEAM_NAME, TeamUpdate
from trainyard.server.bodies import DrainBody, NewUser, validate
from trainyard.server.errors import ApiError, field_errors, json_object
from trainyard.server.responses import (
    AUTHED,
    DRAIN_BODY,
    TEAM_BODY,
    USER_BODY,
    WITH_BODY,
    errors,
    json_body,
)
from trainyard.server.routes.deps import AuthDep, FleetDep, RetentionDep, TenancyDep, UserDep
from trainyard.server.services.retention import MAX_BATCH
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
    if "monthly_budget" in update.model_fields_set:
        request.app.state.platform.usage.budget_changed()
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


class PruneBody(BaseModel):
    """``POST /v1/admin/prune``: which finished jobs to archive and delete."""

    model_config = ConfigDict(extra="forbid")

    before: float = Field(default=None, validate_default=True)
    """Jobs that finished longer ago than this (``90d``, seconds) or before this ISO-8601 time."""
    dry_run: StrictBool = False
    batch: int | None = Field(default=None, ge=1, le=MAX_BATCH)
    max_jobs: int = Field(default=100_000, ge=1, le=10_000_000)

    @field_validator("before", mode="plain")
    @classmethod
    def _before(cls, v: Any) -> float:
        """The cutoff as unix seconds: a duration ago, or a time (not in the future)."""
        if v is None or v == "":
            raise ValueError("required: a duration such as 90d, or an ISO-8601 time")
        if isinstance(v, str) and ("T" in v or v.count("-") == 2):
            try:
                at = datetime.fromisoformat(v)
            except ValueError:
                raise ValueError(f"{v!r} is not an ISO-8601 time") from None
            if at.tzinfo is None:
                raise ValueError("an ISO-8601 time needs its zone, e.g. 2026-09-01T00:00:00Z")
            cutoff = at.timestamp()
            if cutoff > time.time():
                raise ValueError("the cutoff is in the future")
            return cutoff
        return time.time() - parse_duration(v)


PRUNE_BODY = json_body(
    {
        "before": {"type": ["string", "number"], "description": "e.g. 90d, or an ISO-8601 time"},
        "dry_run": {"type": "boolean"},
        "batch": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH},
        "max_jobs": {"type": "integer", "minimum": 1},
    },
    required=("before",),
)


@router.post(
    "/v1/admin/prune",
    tags=["admin"],
    summary="Archive finished jobs to object storage and delete them from the database (admin)",
    responses=errors(*WITH_BODY, 403),
    openapi_extra=PRUNE_BODY,
)
async def prune(
    request: Request, user: UserDep, retention: RetentionDep, tenancy: TenancyDep
) -> dict[str, Any]:
    """Jobs that finished before ``before`` (with their attempts, events and log/artifact index) are
    written to ``archive/`` in object storage, read back, and only then deleted, in batches of
    ``batch``; an archived job is still answered by ``GET /v1/jobs/{id}`` with ``archived: true``.
    ``dry_run`` counts and changes nothing; ``more`` says ``max_jobs`` stopped it early."""
    if not user.is_admin:
        raise ApiError(403, "forbidden", "only admins can prune jobs")
    body = validate(PruneBody, await json_object(request), "invalid prune request")
    report = await retention.prune_async(
        body.before, dry_run=body.dry_run, batch=body.batch, max_jobs=body.max_jobs
    )
    if not body.dry_run and report.jobs:
        await tenancy.audit(user, "jobs.prune", iso(body.before) or "", None, {"jobs": report.jobs})
    return report.as_json(iso)
