"""The public REST API (v1): thin handlers over Platform; errors are JSON with field-level details."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trainyard import __version__
from trainyard.model.quantity import parse_duration
from trainyard.model.records import ROLES, Job, User
from trainyard.model.spec import JobSpec
from trainyard.model.states import TERMINAL, JobStatus
from trainyard.model.team import TEAM_NAME, TeamUpdate
from trainyard.objects.base import ObjectNotFound, check_key
from trainyard.objects.local import LocalObjectStore
from trainyard.server.api_tenancy import add_tenancy_routes
from trainyard.server.auth import UserDep
from trainyard.server.bundles import BundleRefused, check_bundle
from trainyard.server.errors import ApiError, json_object
from trainyard.server.metrics import Metrics
from trainyard.server.platform import Platform, RateLimited
from trainyard.server.responses import (
    AUTHED,
    DRAIN_BODY,
    LOG_TEXT,
    SSE,
    TEAM_BODY,
    USER_BODY,
    WITH_BODY,
    WORKDIR_BODY,
    errors,
)
from trainyard.server.safejson import printable
from trainyard.server.views import artifact_json, event_json, iso, job_json, team_json, worker_json
from trainyard.store.sql import Conflict, IdempotencyConflict, JobFilter, NotFound
from trainyard.web import router as web_router

_STATUSES = {s.value for s in JobStatus}
# Bounds of integer query parameters: what the store's 32- and 64-bit columns hold (larger values
# overflowed the database driver and answered 500).
MAX_ATTEMPT = 2**31 - 1
MAX_OFFSET = 2**63 - 1


def _error(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    # Messages and field names may echo hostile input (a lone surrogate): written so they encode.
    details = [{k: printable(v) for k, v in d.items()} for d in details or []]
    body = {"error": {"code": code, "message": printable(message), "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field_errors(e: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, str]]:
    out = []
    for err in e.errors():
        loc = ".".join(str(p) for p in (*prefix, *err["loc"])) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append({"field": loc, "message": msg})
    return out


class BodyLimit:
    """Refuse request bodies over a size limit with 413 before they are read into memory, and a NUL
    character in an API path or query with 422 (PostgreSQL refuses NUL in text: a job id or filter
    holding one would reach the store only to fail there with a 500)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/v1/") and ("\x00" in path or b"%00" in scope["query_string"]):
            where = "path" if "\x00" in path else "query"
            await _error(
                422,
                "invalid_request",
                "the request is not valid",
                [{"field": where, "message": "must not contain NUL characters"}],
            )(scope, receive, send)
            return
        limit = self.limit_for(path)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _error(413, "payload_too_large", f"request body is over the {limit} byte limit")(
                    scope, receive, send
                )
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise ApiError(413, "payload_too_large", f"request body is over the {limit} byte limit")
            return msg

        await self.app(scope, limited, send)


class CountRequests:
    """Count requests by method and status (plain ASGI: BaseHTTPMiddleware costs ~15% per request)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                self.metrics.http_requests.labels(scope["method"], str(msg["status"])).inc()
            await send(msg)

        await self.app(scope, receive, counting_send)


_JOB_PREFIX = "/v1/jobs/"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastJobReads:
    """GET /v1/jobs/{id}, the route every CLI, UI and SDK poll, served without routing, dependency
    injection and exception middleware (about half of the framework's cost per request). Anything
    unusual (no or bad token, unknown job, an error) goes on to the regular route, which answers with
    the same body or the documented error."""

    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.p = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            path: str = scope["path"]
            job_id = path[len(_JOB_PREFIX) :] if path.startswith(_JOB_PREFIX) else ""
            if job_id and "/" not in job_id:
                body = await self._view(scope, job_id)
                if body is not None:
                    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    async def _view(self, scope: Scope, job_id: str) -> bytes | None:
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if not auth.startswith(b"Bearer "):
            return None
        try:
            user = await self.p.authenticate(auth[7:].decode("latin-1").strip())
            if user is None:
                return None
            view = await self.p.job_view(user, job_id)
        except Exception:
            return None  # the regular route answers (404, 503, ...) in the documented shape
        return json.dumps(view, ensure_ascii=False, separators=(",", ":")).encode()


def create_app(p: Platform) -> FastAPI:
    app = FastAPI(
        title="Trainyard",
        version=__version__,
        description="Submit ML jobs, follow them live, fetch their artifacts.",
    )
    app.state.platform = p
    s = p.settings

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.update(spec_schema.pop("$defs", {}))
        schemas["JobSpec"] = spec_schema
        schemas["TeamUpdate"] = TeamUpdate.model_json_schema(ref_template="#/components/schemas/{model}")
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    def limit_for(path: str) -> int:
        if path.startswith("/objects/"):
            return s.object_limit
        if path == "/v1/workdirs":
            return s.workdir_limit
        return s.max_body

    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(FastJobReads, platform=p)
    app.add_middleware(CountRequests, metrics=p.metrics)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.code, e.message, e.details, e.headers)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, e: NotFound) -> JSONResponse:
        return _error(404, "not_found", f"job {e} not found")

    @app.exception_handler(IdempotencyConflict)
    async def _idem(_: Request, e: IdempotencyConflict) -> JSONResponse:
        return _error(409, "idempotency_conflict", str(e))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, e: Conflict) -> JSONResponse:
        return _error(409, "conflict", str(e))

    @app.exception_handler(PermissionError)
    async def _forbidden(_: Request, e: PermissionError) -> JSONResponse:
        return _error(403, "forbidden", str(e))

    @app.exception_handler(RateLimited)
    async def _rate(_: Request, e: RateLimited) -> JSONResponse:
        return _error(429, "rate_limited", str(e), headers={"Retry-After": str(max(1, round(e.retry_after)))})

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(x) for x in err["loc"][1:]) or str(err["loc"][0]), "message": err["msg"]}
            for err in e.errors()
        ]
        return _error(422, "invalid_request", "the request is not valid", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(e.status_code, code, str(e.detail))

    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    @app.exception_handler(DBAPIError)
    async def _store_error(_: Request, e: DBAPIError) -> JSONResponse:
        # Database unreachable is a retryable condition, not a server bug. A connection the server
        # dropped surfaces as OperationalError or InterfaceError, or as a DBAPIError that says so.
        # Answered here, not by the catch-all below: that one re-raises after answering, and the
        # server then drops the keep-alive connection under the client's next request.
        if isinstance(e, OperationalError | InterfaceError) or e.connection_invalidated:
            return _error(503, "unavailable", "the state store is unavailable", headers={"Retry-After": "2"})
        raise e

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> JSONResponse:
        return _error(500, "internal", "internal error")

    # ---- jobs ----------------------------------------------------------------------------------
    @app.post(
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
                    "description": "a replay with the same key returns the same job (200); "
                    "another body gets 409",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}},
            },
        },
    )
    async def submit(request: Request, user: UserDep) -> Response:
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
            raise ApiError(422, "invalid_spec", "the job spec is not valid", _field_errors(e)) from None
        except ArithmeticError:  # e.g. memory "9…9" (400 digits): float() gives inf, int(inf) overflows
            raise ApiError(
                422, "invalid_spec", "the job spec is not valid: a number is out of range"
            ) from None
        await _check_submittable(user, spec)
        result = await p.submit(user, spec, idempotency_key)
        return JSONResponse(job_json(result.job), status_code=201 if result.created else 200)

    async def _check_submittable(user: User, spec: JobSpec) -> None:
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

    @app.get("/v1/jobs", tags=["jobs"], summary="List jobs, newest first", responses=errors(*AUTHED))
    async def list_jobs(
        user: UserDep,
        status: Annotated[list[str] | None, Query()] = None,
        user_: Annotated[str | None, Query(alias="user")] = None,
        team: str | None = None,
        name: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        statuses = [x.upper() for part in (status or []) for x in part.split(",") if x]
        bad = [x for x in statuses if x not in _STATUSES]
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

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=None, responses=errors(*AUTHED, 404))
    async def get_job(job_id: str, user: UserDep) -> JSONResponse:
        # The most polled route: the view is plain JSON data already, so skip FastAPI's re-encoding.
        return JSONResponse(await p.job_view(user, job_id))

    @app.delete(
        "/v1/jobs/{job_id}",
        status_code=202,
        tags=["jobs"],
        summary="Cancel (idempotent)",
        responses=errors(*AUTHED, 403, 404),
    )
    async def cancel(job_id: str, user: UserDep) -> dict[str, Any]:
        job = await p.cancel(user, job_id)
        await p.audit(user, "job.cancel", job.id, job.team, {"status": job.status.value})
        return job_json(job)

    @app.post(
        "/v1/jobs/{job_id}/restart", status_code=202, tags=["jobs"], responses=errors(*AUTHED, 403, 404, 409)
    )
    async def restart(job_id: str, user: UserDep) -> dict[str, Any]:
        job = await p.restart(user, job_id)
        await p.audit(user, "job.restart", job.id, job.team, {"attempt": job.attempt})
        return job_json(job)

    # ---- events --------------------------------------------------------------------------------
    @app.get(
        "/v1/jobs/{job_id}/events",
        tags=["events"],
        response_model=None,
        responses={**SSE, **errors(*AUTHED, 404)},
    )
    async def job_events(
        job_id: str,
        user: UserDep,
        follow: bool = False,
        after: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any] | StreamingResponse:
        job = await p.visible_job(user, job_id)
        if not follow:
            events = await p.db(p.store.job_events, job_id, after)
            return {"events": [event_json(e) for e in events]}
        return _sse(_follow_job_events(job, after))

    async def _follow_job_events(job: Job, after: int) -> AsyncIterator[str]:
        sub = p.bus.subscribe(frozenset({"job.events", "job.submitted"}))
        try:
            last = after
            while True:
                for e in await p.db(p.store.job_events, job.id, last):
                    last = e.id
                    yield _sse_event("job_event", json.dumps(event_json(e)), e.id)
                current = await p.db(p.store.get_job, job.id)
                if current is None or current.status in TERMINAL:
                    # The job may have finished between the two reads: its last events first.
                    for e in await p.db(p.store.job_events, job.id, last):
                        last = e.id
                        yield _sse_event("job_event", json.dumps(event_json(e)), e.id)
                    yield _sse_event("end", json.dumps({"status": current.status.value if current else None}))
                    return
                # The bus is a hint to re-read; a 15 s poll covers a missed one and keeps the stream alive.
                got = await _next_for_job(sub, job.id, 15.0)
                if not got:
                    yield ": keep-alive\n\n"
        finally:
            sub.close()

    @app.get(
        "/v1/events",
        tags=["events"],
        summary="SSE stream of every job event you may see",
        response_class=StreamingResponse,
        responses={**SSE, **errors(*AUTHED)},
    )
    async def all_events(
        user: UserDep, after: Annotated[int | None, Query(ge=0, le=MAX_OFFSET)] = None
    ) -> StreamingResponse:
        team = None if user.is_admin else user.team

        async def gen() -> AsyncIterator[str]:
            sub = p.bus.subscribe(frozenset({"job.events", "job.submitted"}))
            try:
                last = after if after is not None else await p.db(p.store.last_event_id)
                while True:
                    for e in await p.db(p.store.events_since, last, team):
                        last = e.id
                        yield _sse_event("job_event", json.dumps(event_json(e)), e.id)
                    if not await _next_any(sub, 15.0):
                        yield ": keep-alive\n\n"
            finally:
                sub.close()

        return _sse(gen())

    # ---- logs ----------------------------------------------------------------------------------
    @app.get(
        "/v1/jobs/{job_id}/logs",
        tags=["logs"],
        response_model=None,
        responses={**LOG_TEXT, **errors(*AUTHED, 404)},
        summary="Log bytes; follow=true streams until the attempt ends (SSE with Accept: text/event-stream)",
    )
    async def logs(
        job_id: str,
        user: UserDep,
        request: Request,
        attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPT)] = None,
        since: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        tail: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
        follow: bool = False,
    ) -> Response:
        job = await p.visible_job(user, job_id)
        if attempt is not None and attempt > job.attempt:
            raise ApiError(404, "not_found", f"job {job_id} has no attempt {attempt}")
        if tail is not None:
            sl = await p.tail_lines(job, attempt, tail)
        elif follow:
            sl = await p.read_log(job, attempt, since)
        else:
            number = attempt if attempt is not None else job.attempt
            end = max(since, await p.log_end(job, number))
            headers = {"X-Trainyard-Attempt": str(number), "X-Trainyard-Next-Offset": str(end)}
            return StreamingResponse(
                _log_range(job, number, since, end), media_type="text/plain; charset=utf-8", headers=headers
            )
        headers = {"X-Trainyard-Attempt": str(sl.attempt), "X-Trainyard-Next-Offset": str(sl.next_offset)}
        if not follow:
            return Response(sl.data, media_type="text/plain; charset=utf-8", headers=headers)
        sse = "text/event-stream" in request.headers.get("accept", "")
        gen = _follow_logs(
            job, attempt, sl.offset + len(sl.data) if sl.data else sl.next_offset, sl.data, sse
        )
        if sse:
            return _sse(gen)  # type: ignore[arg-type]
        return StreamingResponse(gen, media_type="text/plain; charset=utf-8", headers=headers)

    async def _log_range(job: Job, number: int, pos: int, end: int) -> AsyncIterator[bytes]:
        while pos < end:
            sl = await p.read_log(job, number, pos)
            if not sl.data:
                return
            data = sl.data[: end - sl.offset]
            yield data
            pos = sl.offset + len(data)

    async def _follow_logs(
        job: Job, attempt: int | None, pos: int, first: bytes, sse: bool
    ) -> AsyncIterator[bytes | str]:
        number = attempt if attempt is not None else job.attempt
        pinned = attempt is not None

        def out(data: bytes, offset: int) -> bytes | str:
            if sse:
                text = data.decode("utf-8", "replace")
                return _sse_event("log", json.dumps({"attempt": number, "offset": offset, "text": text}))
            return data

        if first:
            yield out(first, pos - len(first))
        while True:
            if number > 0:
                sl = await p.read_log(job, number, pos)
                if sl.data:
                    yield out(sl.data, sl.offset)
                    pos = sl.offset + len(sl.data)
            current = await p.db(p.store.get_job, job.id)
            if current is None:
                return
            if number > 0 and not p.attempt_live(current, number):
                # The attempt ended: its final bytes were sealed before the report; read them once more.
                sl = await p.read_log(current, number, pos)
                if sl.data:
                    yield out(sl.data, sl.offset)
                if pinned or current.status in TERMINAL:
                    if sse:
                        yield _sse_event(
                            "end",
                            json.dumps({"status": current.status.value, "exit_code": current.exit_code}),
                        )
                    return
                if current.attempt > number:
                    number, pos = current.attempt, 0
                    banner = f"\n[trainyard: attempt {number} on worker {current.worker_id or '?'}]\n"
                    yield (
                        out(banner.encode(), 0)
                        if not sse
                        else _sse_event(
                            "attempt", json.dumps({"attempt": number, "worker_id": current.worker_id})
                        )
                    )
            elif number == 0 and current.attempt > 0:
                number, pos = current.attempt, 0
            job = current
            if number > 0:
                await p.tails.wait(job.id, number, 1.0, since=pos)
            else:
                await asyncio.sleep(0.25)

    # ---- artifacts -----------------------------------------------------------------------------
    @app.get("/v1/jobs/{job_id}/artifacts", tags=["artifacts"], responses=errors(*AUTHED, 404))
    async def list_artifacts(
        job_id: str, user: UserDep, attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPT)] = None
    ) -> dict[str, Any]:
        await p.visible_job(user, job_id)
        arts = await p.db(p.store.artifacts, job_id, attempt)
        if attempt is None and arts:
            latest = max(a.attempt for a in arts)
            arts = [a for a in arts if a.attempt == latest]
        return {"artifacts": [artifact_json(a, p.presign_get(a.object_key)) for a in arts]}

    @app.get(
        "/v1/jobs/{job_id}/artifacts/{path:path}",
        tags=["artifacts"],
        response_model=None,
        status_code=307,
        responses={307: {"description": "redirect to a short-lived download URL"}, **errors(*AUTHED, 404)},
    )
    async def get_artifact(
        job_id: str,
        path: str,
        user: UserDep,
        attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPT)] = None,
    ) -> Response:
        await p.visible_job(user, job_id)
        arts = [a for a in await p.db(p.store.artifacts, job_id, attempt) if a.path == path]
        if not arts:
            raise ApiError(404, "not_found", f"job {job_id} has no artifact {path!r}")
        art = max(arts, key=lambda a: a.attempt)
        return RedirectResponse(p.presign_get(art.object_key), status_code=307)

    @app.get(
        "/v1/jobs/{job_id}/metrics",
        tags=["metrics"],
        summary="Scalar series the job logged",
        responses=errors(*AUTHED, 404),
    )
    async def job_metrics(job_id: str, user: UserDep) -> dict[str, Any]:
        job = await p.visible_job(user, job_id)
        series: dict[str, list[dict[str, Any]]] = {}
        if job.attempt > 0:
            sl = await p.read_log(job, None, 0)
            for line in sl.data.splitlines():
                if not line.startswith(b"TRAINYARD_METRIC "):
                    continue
                try:
                    m = json.loads(line[len(b"TRAINYARD_METRIC ") :])
                    series.setdefault(str(m["name"]), []).append(
                        {"step": m.get("step"), "value": float(m["value"])}
                    )
                except (ValueError, KeyError, TypeError):
                    continue
        return {"job_id": job.id, "attempt": job.attempt, "series": series}

    # ---- workdir bundles -----------------------------------------------------------------------
    @app.post(
        "/v1/workdirs",
        status_code=201,
        tags=["jobs"],
        summary="Upload a working-directory bundle (tar.gz); needs the right to submit jobs",
        responses=errors(*AUTHED, 403, 413),
        openapi_extra=WORKDIR_BODY,
    )
    async def upload_workdir(request: Request, user: UserDep) -> dict[str, Any]:
        if not user.can_submit:  # a bundle is only ever the input of a job
            raise ApiError(
                403, "forbidden", "viewers cannot upload workdir bundles (they cannot submit jobs)"
            )
        digest = hashlib.sha256()
        size = 0
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as tmp:
            async for chunk in request.stream():
                digest.update(chunk)
                size += len(chunk)
                tmp.write(chunk)
            if size == 0:
                raise ApiError(422, "invalid_request", "the bundle is empty")
            tmp.seek(0)
            head = tmp.read(2)
            if head != b"\x1f\x8b":
                raise ApiError(422, "invalid_request", "the bundle must be a gzip-compressed tar archive")
            tmp.seek(0)
            # What it unpacks to, read through its headers (a gzip bomb is refused at its first
            # oversized member, before its data is inflated); the worker checks again on unpacking.
            try:
                await asyncio.to_thread(check_bundle, tmp, s.workdir_unpacked_limit, s.workdir_file_limit)
            except BundleRefused as e:
                code = "payload_too_large" if e.status == 413 else "invalid_request"
                raise ApiError(e.status, code, e.message, [{"field": "body", "message": e.message}]) from None
            tmp.seek(0)
            key = f"bundles/{user.team}/{digest.hexdigest()}.tar.gz"
            if not p.objects.exists(key):
                await asyncio.to_thread(p.objects.put, key, tmp.read())
        return {"workdir": key, "sha256": digest.hexdigest(), "size": size}

    # ---- fleet ---------------------------------------------------------------------------------
    @app.get("/v1/workers", tags=["fleet"], responses=errors(*AUTHED))
    async def list_workers(user: UserDep) -> dict[str, Any]:
        workers = await p.db(p.store.list_workers)
        live = await p.db(p.store.live_attempts)
        used: dict[str, tuple[float, int, int, int]] = {}
        for a in live:
            c, m, g, n = used.get(a.worker_id, (0.0, 0, 0, 0))
            used[a.worker_id] = (c + a.cpu, m + a.memory, g + len(a.gpu_indices), n + 1)
        out = []
        for w in workers:
            c, m, g, n = used.get(w.id, (0.0, 0, 0, 0))
            beat = p.cache.last_heartbeat(w.id)  # fresher than the table's copy
            w = dataclasses.replace(w, last_heartbeat=beat) if beat is not None else w
            out.append(worker_json(w, (c, m, g), n, p._alive(w.id, w.registered_at)))
        return {"workers": out}

    @app.get("/v1/queues", tags=["fleet"], responses=errors(*AUTHED))
    async def queues(user: UserDep) -> dict[str, Any]:
        pending = await p.db(p.store.pending_by_pool_team)
        running = await p.db(p.store.running_by_team)
        pools: dict[str, dict[str, Any]] = {}
        teams: dict[str, dict[str, Any]] = {}
        for pool, team, n in pending:
            key = pool or "default"
            pools.setdefault(key, {"pool": key, "pending": 0, "running": 0})["pending"] += n
            teams.setdefault(
                team, {"team": team, "pending": 0, "running": 0, "cpu": 0.0, "memory": 0, "gpu": 0}
            )
            teams[team]["pending"] += n
        for team, n, cpu, mem, gpu in running:
            t = teams.setdefault(
                team, {"team": team, "pending": 0, "running": 0, "cpu": 0.0, "memory": 0, "gpu": 0}
            )
            t.update(running=n, cpu=cpu, memory=mem, gpu=gpu)
        for w in await p.db(p.store.list_workers, False):
            pools.setdefault(w.pool, {"pool": w.pool, "pending": 0, "running": 0})
        pool_of = {w.id: w.pool for w in await p.db(p.store.list_workers)}
        for a in await p.db(p.store.live_attempts):
            if a.worker_id in pool_of:
                pool = pool_of[a.worker_id]
                pools.setdefault(pool, {"pool": pool, "pending": 0, "running": 0})["running"] += 1
        if not user.is_admin:
            teams = {k: v for k, v in teams.items() if k == user.team}
        return {
            "pools": sorted(pools.values(), key=lambda x: x["pool"]),
            "teams": sorted(teams.values(), key=lambda x: x["team"]),
        }

    @app.post(
        "/v1/admin/workers/{worker}/drain",
        tags=["admin"],
        summary="Drain a worker (id or name): no new work; its jobs are preempted at the deadline (admin)",
        responses=errors(*WITH_BODY, 403, 404),
        openapi_extra=DRAIN_BODY,
    )
    async def drain_worker(worker: str, request: Request, user: UserDep) -> dict[str, Any]:
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

    # ---- admin ---------------------------------------------------------------------------------
    @app.get(
        "/v1/teams", tags=["fleet"], summary="Teams: fair-share weight and quotas", responses=errors(*AUTHED)
    )
    async def list_teams(user: UserDep) -> dict[str, Any]:
        return {"teams": [team_json(t) for t in await p.db(p.store.list_teams)]}

    @app.put(
        "/v1/admin/teams/{name}",
        tags=["admin"],
        summary="Create or change a team (admin)",
        responses=errors(*WITH_BODY, 403),
        openapi_extra=TEAM_BODY,
    )
    async def set_team(name: str, request: Request, user: UserDep) -> dict[str, Any]:
        if not user.is_admin:
            raise ApiError(403, "forbidden", "only admins can change teams")
        if not TEAM_NAME.fullmatch(name):
            raise ApiError(422, "invalid_request", f"{name!r} is not a team name")
        body = await json_object(request, empty_ok=True)
        try:
            update = TeamUpdate.model_validate(body)
        except ValidationError as e:
            raise ApiError(422, "invalid_request", "the team is not valid", _field_errors(e)) from None
        except ArithmeticError:  # memory_quota "9…9": parse_memory overflows
            raise ApiError(
                422, "invalid_request", "the team is not valid: a number is out of range"
            ) from None
        team = await p.db(p.store.set_team, name, update.changes())
        p.kick_scheduler.set()  # a raised quota may let jobs run now
        await p.audit(user, "team.set", name, name, body)
        return team_json(team)

    @app.post(
        "/v1/admin/users",
        status_code=201,
        tags=["admin"],
        summary="Create a user and return a token",
        responses=errors(*WITH_BODY, 403),
        openapi_extra=USER_BODY,
    )
    async def create_user(request: Request, user: UserDep) -> dict[str, Any]:
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

    # ---- objects (presigned) -------------------------------------------------------------------
    # Only a local store is served here; with S3 the presigned URLs point at the bucket itself.
    def local_objects() -> LocalObjectStore:
        if not isinstance(p.objects, LocalObjectStore):
            raise ApiError(404, "not_found", "objects are not served by this control plane")
        return p.objects

    @app.get("/objects/{key:path}", include_in_schema=False, response_model=None)
    async def get_object(key: str, method: str = "", expires: str = "", sig: str = "") -> Response:
        objects = local_objects()
        why = objects.verify(key, "GET", expires, sig) if method == "GET" else "URL is not for GET"
        if why:
            raise ApiError(403, "forbidden", why)
        try:
            size = objects.size(key)
        except ObjectNotFound:
            raise ApiError(404, "not_found", "no such object") from None
        return StreamingResponse(
            _iterate_in_thread(objects.iter(key)),
            media_type="application/octet-stream",
            headers={"Content-Length": str(size)},
        )

    @app.put("/objects/{key:path}", include_in_schema=False, response_model=None)
    async def put_object(
        key: str,
        request: Request,
        method: str = "",
        expires: str = "",
        sig: str = "",
        upload_id: str = "",
        part: int = 0,
    ) -> Response:
        objects = local_objects()
        if method != "PUT":
            raise ApiError(403, "forbidden", "URL is not for PUT")
        why = objects.verify(key, "PUT", expires, sig, upload_id=upload_id, part=part)
        if why:
            raise ApiError(403, "forbidden", why)
        if upload_id:
            # One part of a multipart upload: answered with its ETag, as S3 does.
            try:
                etag = await objects.put_part_stream(key, upload_id, part, request.stream(), s.object_limit)
            except ObjectNotFound:
                raise ApiError(404, "not_found", "no such multipart upload") from None
            return JSONResponse({"key": key, "part": part}, headers={"ETag": f'"{etag}"'})
        size = await objects.put_stream(key, request.stream(), s.object_limit)
        return JSONResponse({"key": key, "size": size})

    # ---- operations ----------------------------------------------------------------------------
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        # `leader`: whether this replica runs the scheduler, reconciler and relay right now.
        return {"status": "ok", "leader": p.is_leader}

    @app.get("/readyz", tags=["ops"], response_model=None, responses=errors(503))
    async def readyz() -> Response:
        try:
            await p.db(p.store.ping)
        except Exception as e:
            return _error(
                503,
                "unavailable",
                f"state store unavailable: {type(e).__name__}",
                headers={"Retry-After": "2"},
            )
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        data = await asyncio.to_thread(generate_latest, p.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    add_tenancy_routes(app, p)
    app.include_router(web_router)  # the web UI at / (static files under /ui/)

    return app


async def _iterate_in_thread(it: Iterator[bytes]) -> AsyncIterator[bytes]:
    while True:
        chunk = await asyncio.to_thread(next, it, b"")
        if not chunk:
            return
        yield chunk


async def _next_for_job(sub: Any, job_id: str, timeout: float) -> bool:
    async def wait() -> bool:
        async for payload in sub:
            if payload.get("job_id") == job_id:
                return True
        return False

    try:
        return await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        return False


async def _next_any(sub: Any, timeout: float) -> bool:
    async def wait() -> bool:
        async for _ in sub:
            return True
        return False

    try:
        return await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        return False


def _sse_event(event: str, data: str, id_: int | None = None) -> str:
    head = f"id: {id_}\n" if id_ is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


def _sse(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
