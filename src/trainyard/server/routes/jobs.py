"""Jobs: submit, list, read, cancel, restart; their events, and every job's as one SSE stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from trainyard.model.records import Job, User
from trainyard.model.spec import JobSpec
from trainyard.model.states import TERMINAL
from trainyard.objects.base import check_key
from trainyard.server.errors import ApiError, field_errors, json_object
from trainyard.server.platform import Platform
from trainyard.server.responses import AUTHED, SSE, WITH_BODY, errors
from trainyard.server.routes.deps import PlatformDep, UserDep
from trainyard.server.routes.params import MAX_OFFSET, STATUSES
from trainyard.server.routes.sse import next_any, next_for_job, sse, sse_event
from trainyard.server.views import event_json, job_json
from trainyard.store.sql import JobFilter

router = APIRouter()


@router.post(
    "/v1/jobs",
    status_code=201,
    tags=["jobs"],
    summary="Submit a job (body: a JobSpec)",
    responses={
        200: {"description": "an Idempotency-Key replay: the job that key created"},
        **errors(*WITH_BODY, 403, 409, 429),
    },
    openapi_extra={
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 256},
                "description": "a replay with the same key returns the same job (200); another body gets 409",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}},
        },
    },
)
async def submit(request: Request, user: UserDep, p: PlatformDep) -> Response:
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 256:
        raise ApiError(
            422,
            "invalid_request",
            "Idempotency-Key must be 1 to 256 characters",
            [{"field": "Idempotency-Key", "message": "must be 1 to 256 characters"}],
        )
    body = await json_object(request, code="invalid_spec", what="a JSON object (a JobSpec)")
    try:
        spec = JobSpec.model_validate(body)
    except ValidationError as e:
        raise ApiError(422, "invalid_spec", "the job spec is not valid", field_errors(e)) from None
    except ArithmeticError:  # e.g. memory "9…9" (400 digits): float() gives inf, int(inf) overflows
        raise ApiError(422, "invalid_spec", "the job spec is not valid: a number is out of range") from None
    await _check_submittable(p, user, spec)
    result = await p.submit(user, spec, idempotency_key)
    return JSONResponse(job_json(result.job), status_code=201 if result.created else 200)


async def _check_submittable(p: Platform, user: User, spec: JobSpec) -> None:
    if not user.can_submit:
        raise ApiError(403, "forbidden", "viewers cannot submit jobs")
    if spec.team and spec.team != user.team:
        if not user.is_admin:
            raise ApiError(403, "forbidden", f"you may submit only to your team {user.team!r}")
        if not await p.db(p.store.team_exists, spec.team):
            raise ApiError(
                422,
                "invalid_spec",
                "the job spec is not valid",
                [{"field": "team", "message": f"team {spec.team!r} does not exist"}],
            )
    if spec.workdir is not None:
        team = spec.team or user.team
        ok = spec.workdir.startswith(f"bundles/{team}/")
        try:
            ok = ok and p.objects.exists(check_key(spec.workdir))
        except ValueError:
            ok = False
        if not ok:
            raise ApiError(
                422,
                "invalid_spec",
                "the job spec is not valid",
                [{"field": "workdir", "message": "no such uploaded workdir for your team"}],
            )
    if spec.secrets:
        team = spec.team or user.team
        known = {s.name for s in await p.db(p.store.list_secrets, team)}
        missing = [n for n in spec.secrets if n not in known]
        if missing:
            raise ApiError(
                422,
                "invalid_spec",
                "the job spec is not valid",
                [{"field": "secrets", "message": f"team {team!r} has no secret {n!r}"} for n in missing],
            )


@router.get("/v1/jobs", tags=["jobs"], summary="List jobs, newest first", responses=errors(*AUTHED))
async def list_jobs(
    user: UserDep,
    p: PlatformDep,
    status: Annotated[list[str] | None, Query()] = None,
    user_: Annotated[str | None, Query(alias="user")] = None,
    team: str | None = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    statuses = [x.upper() for part in (status or []) for x in part.split(",") if x]
    bad = [x for x in statuses if x not in STATUSES]
    if bad:
        raise ApiError(
            422,
            "invalid_request",
            "unknown status",
            [{"field": "status", "message": f"{b!r} is not a job status"} for b in bad],
        )
    flt = JobFilter(
        status=statuses,
        user=user_,
        team=team,
        name=name,
        visible_team=None if user.is_admin else user.team,
    )
    try:
        jobs, next_cursor = await p.db(p.store.list_jobs, flt, limit, cursor)
    except ValueError as e:
        raise ApiError(422, "invalid_request", str(e), [{"field": "cursor", "message": str(e)}]) from None
    return {"jobs": [await p.with_queue_info(job_json(j)) for j in jobs], "next_cursor": next_cursor}


@router.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=None, responses=errors(*AUTHED, 404))
async def get_job(job_id: str, user: UserDep, p: PlatformDep) -> JSONResponse:
    # The most polled route: the view is plain JSON data already, so skip FastAPI's re-encoding.
    return JSONResponse(await p.job_view(user, job_id))


@router.delete(
    "/v1/jobs/{job_id}",
    status_code=202,
    tags=["jobs"],
    summary="Cancel (idempotent)",
    responses=errors(*AUTHED, 403, 404),
)
async def cancel(job_id: str, user: UserDep, p: PlatformDep) -> dict[str, Any]:
    job = await p.cancel(user, job_id)
    await p.audit(user, "job.cancel", job.id, job.team, {"status": job.status.value})
    return job_json(job)


@router.post(
    "/v1/jobs/{job_id}/restart", status_code=202, tags=["jobs"], responses=errors(*AUTHED, 403, 404, 409)
)
async def restart(job_id: str, user: UserDep, p: PlatformDep) -> dict[str, Any]:
    job = await p.restart(user, job_id)
    await p.audit(user, "job.restart", job.id, job.team, {"attempt": job.attempt})
    return job_json(job)


@router.get(
    "/v1/jobs/{job_id}/events",
    tags=["events"],
    response_model=None,
    responses={**SSE, **errors(*AUTHED, 404)},
)
async def job_events(
    job_id: str,
    user: UserDep,
    p: PlatformDep,
    follow: bool = False,
    after: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any] | StreamingResponse:
    job = await p.visible_job(user, job_id)
    if not follow:
        events = await p.db(p.store.job_events, job_id, after)
        return {"events": [event_json(e) for e in events]}
    return sse(_follow_job_events(p, job, after))


async def _follow_job_events(p: Platform, job: Job, after: int) -> AsyncIterator[str]:
    sub = p.bus.subscribe(frozenset({"job.events", "job.submitted"}))
    try:
        last = after
        while True:
            for e in await p.db(p.store.job_events, job.id, last):
                last = e.id
                yield sse_event("job_event", json.dumps(event_json(e)), e.id)
            current = await p.db(p.store.get_job, job.id)
            if current is None or current.status in TERMINAL:
                # The job may have finished between the two reads: its last events first.
                for e in await p.db(p.store.job_events, job.id, last):
                    last = e.id
                    yield sse_event("job_event", json.dumps(event_json(e)), e.id)
                yield sse_event("end", json.dumps({"status": current.status.value if current else None}))
                return
            # The bus is a hint to re-read; a 15 s poll covers a missed one and keeps the stream alive.
            got = await next_for_job(sub, job.id, 15.0)
            if not got:
                yield ": keep-alive\n\n"
    finally:
        sub.close()


@router.get(
    "/v1/events",
    tags=["events"],
    summary="SSE stream of every job event you may see",
    response_class=StreamingResponse,
    responses={**SSE, **errors(*AUTHED)},
)
async def all_events(
    user: UserDep, p: PlatformDep, after: Annotated[int | None, Query(ge=0, le=MAX_OFFSET)] = None
) -> StreamingResponse:
    team = None if user.is_admin else user.team

    async def gen() -> AsyncIterator[str]:
        sub = p.bus.subscribe(frozenset({"job.events", "job.submitted"}))
        try:
            last = after if after is not None else await p.db(p.store.last_event_id)
            while True:
                for e in await p.db(p.store.events_since, last, team):
                    last = e.id
                    yield sse_event("job_event", json.dumps(event_json(e)), e.id)
                if not await next_any(sub, 15.0):
                    yield ": keep-alive\n\n"
        finally:
            sub.close()

    return sse(gen())
