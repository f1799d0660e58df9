"""Jobs: submit, list, read, cancel, restart; their events, and every job's as one SSE stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from trainyard.model.records import Job
from trainyard.model.states import TERMINAL
from trainyard.server.errors import ApiError
from trainyard.server.middleware import SUBMIT_FAILED
from trainyard.server.responses import AUTHED, SSE, WITH_BODY, errors
from trainyard.server.routes.deps import JobsDep, LogsDep, TenancyDep, UserDep
from trainyard.server.routes.params import MAX_OFFSET, STATUSES
from trainyard.server.routes.sse import next_any, next_for_job, sse, sse_event
from trainyard.server.services.jobs import BadCursor, JobService
from trainyard.server.services.logs import LogService
from trainyard.server.submission import accepted_spec
from trainyard.server.views import event_json, job_json, task_json

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
async def submit(request: Request, user: UserDep, jobs: JobsDep) -> Response:
    """Accept a job. The body is a JobSpec; with an ``Idempotency-Key`` header a retried request
    returns the job the key created (200) instead of a second one, and another body gets 409.
    (Usually answered before routing, by ``middleware.FastSubmits``, with the same body.)"""
    idempotency_key = request.headers.get("idempotency-key")
    spec = await accepted_spec(jobs, user, idempotency_key, await request.body())
    failed = request.scope.get(SUBMIT_FAILED)
    if failed is not None:  # middleware.FastSubmits submitted it already: answer how that failed
        raise failed
    result = await jobs.submit(user, spec, idempotency_key)
    return JSONResponse(job_json(result.job), status_code=201 if result.created else 200)


@router.get("/v1/jobs", tags=["jobs"], summary="List jobs, newest first", responses=errors(*AUTHED))
async def list_jobs(
    user: UserDep,
    jobs: JobsDep,
    status: Annotated[list[str] | None, Query()] = None,
    user_: Annotated[str | None, Query(alias="user")] = None,
    team: str | None = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The jobs you may see (an admin: all; others: their team's), newest first. ``status`` takes
    one or more states (repeated or comma-separated); ``next_cursor`` fetches the next page."""
    statuses = _statuses(status)
    try:
        views, next_cursor = await jobs.list_jobs(
            user, statuses=statuses, owner=user_, team=team, name=name, limit=limit, cursor=cursor
        )
    except BadCursor as e:
        raise ApiError(422, "invalid_request", str(e), [{"field": "cursor", "message": str(e)}]) from None
    return {"jobs": views, "next_cursor": next_cursor}


@router.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=None, responses=errors(*AUTHED, 404))
async def get_job(job_id: str, user: UserDep, jobs: JobsDep) -> JSONResponse:
    """The job with its attempts, and while it is pending its place in the queue and estimated start.
    (Usually answered before routing, by ``middleware.FastJobReads``, with the same body.)"""
    # The most polled route: the view is plain JSON data already, so skip FastAPI's re-encoding.
    return JSONResponse(await jobs.job_view(user, job_id))


def _statuses(status: list[str] | None) -> list[str]:
    """``status`` query values (repeated or comma-separated), checked: 422 naming the unknown ones."""
    statuses = [x.upper() for part in (status or []) for x in part.split(",") if x]
    bad = [x for x in statuses if x not in STATUSES]
    if bad:
        raise ApiError(
            422,
            "invalid_request",
            "unknown status",
            [{"field": "status", "message": f"{b!r} is not a job status"} for b in bad],
        )
    return statuses


@router.get(
    "/v1/jobs/{job_id}/tasks",
    tags=["jobs"],
    summary="An array's tasks, by index, in pages",
    responses=errors(*AUTHED, 404),
)
async def array_tasks(
    job_id: str,
    user: UserDep,
    jobs: JobsDep,
    logs: LogsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
    metric: Annotated[str | None, Query(max_length=200)] = None,
    best: Literal["min", "max"] = "min",
) -> dict[str, Any]:
    """The tasks of an array (each a job of its own: ``GET /v1/jobs/{task id}``), by index, with
    ``status`` filters and ``next_cursor`` paging. With ``metric``, each task that logged it carries
    ``best``: the lowest (``best=min``) or highest value of that metric in its latest attempt."""
    array = await jobs.visible_job(user, job_id)
    if not array.is_array:
        raise ApiError(404, "not_found", f"job {job_id} is not an array")
    try:
        tasks, next_cursor = await jobs.tasks(array, limit, cursor, _statuses(status))
    except BadCursor as e:
        raise ApiError(422, "invalid_request", str(e), [{"field": "cursor", "message": str(e)}]) from None
    views = [task_json(t) for t in tasks]
    if metric:
        values = await _best_values(logs, tasks, metric, max if best == "max" else min)
        for view in views:
            view["best"] = values.get(view["id"])
    return {"array_id": array.id, "tasks": views, "next_cursor": next_cursor, "metric": metric, "best": best}


async def _best_values(logs: LogService, tasks: list[Job], metric: str, pick: Any) -> dict[str, float]:
    """Each task's best value of ``metric`` in its latest attempt's log (a few read at once)."""
    gate = asyncio.Semaphore(8)
    out: dict[str, float] = {}

    async def one(task: Job) -> None:
        async with gate:
            series = (await logs.metric_series(task)).get(metric) or []
        numbers = [p["value"] for p in series if isinstance(p.get("value"), int | float)]
        if numbers:
            out[task.id] = pick(numbers)

    await asyncio.gather(*(one(t) for t in tasks if t.attempt > 0))
    return out


@router.delete(
    "/v1/jobs/{job_id}",
    status_code=202,
    tags=["jobs"],
    summary="Cancel (idempotent)",
    responses=errors(*AUTHED, 403, 404),
)
async def cancel(job_id: str, user: UserDep, jobs: JobsDep, tenancy: TenancyDep) -> dict[str, Any]:
    """A pending job ends at once; a running one is CANCELLING until its worker has stopped it. A
    finished job stays as it was."""
    job = await jobs.cancel(user, job_id)
    await tenancy.audit(user, "job.cancel", job.id, job.team, {"status": job.status.value})
    return job_json(job)


@router.post(
    "/v1/jobs/{job_id}/restart", status_code=202, tags=["jobs"], responses=errors(*AUTHED, 403, 404, 409)
)
async def restart(job_id: str, user: UserDep, jobs: JobsDep, tenancy: TenancyDep) -> dict[str, Any]:
    """Run a finished job again as a new attempt (its owner, a team admin or an admin)."""
    job = await jobs.restart(user, job_id)
    await tenancy.audit(user, "job.restart", job.id, job.team, {"attempt": job.attempt})
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
    jobs: JobsDep,
    follow: bool = False,
    after: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any] | StreamingResponse:
    """The job's state history after event ``after``; ``follow=true`` streams new events (SSE) until
    the job ends."""
    job = await jobs.visible_job(user, job_id)
    if not follow:
        return {"events": [event_json(e) for e in await jobs.events(job_id, after)]}
    return sse(_follow_job_events(jobs, job, after))


async def _follow_job_events(jobs: JobService, job: Job, after: int) -> AsyncIterator[str]:
    sub = jobs.subscribe_events()
    try:
        last = after
        while True:
            for e in await jobs.events(job.id, last):
                last = e.id
                yield sse_event("job_event", json.dumps(event_json(e)), e.id)
            current = await jobs.current(job.id)
            if current is None or current.status in TERMINAL:
                # The job may have finished between the two reads: its last events first.
                for e in await jobs.events(job.id, last):
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
    user: UserDep, jobs: JobsDep, after: Annotated[int | None, Query(ge=0, le=MAX_OFFSET)] = None
) -> StreamingResponse:
    """Every job event you may see, from event ``after`` (default: from now on), as SSE."""
    team = None if user.is_admin else user.team

    async def gen() -> AsyncIterator[str]:
        sub = jobs.subscribe_events()
        try:
            last = after if after is not None else await jobs.last_event_id()
            while True:
                for e in await jobs.events_since(last, team):
                    last = e.id
                    yield sse_event("job_event", json.dumps(event_json(e)), e.id)
                if not await next_any(sub, 15.0):
                    yield ": keep-alive\n\n"
        finally:
            sub.close()

    return sse(gen())
