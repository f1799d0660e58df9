"""Plain ASGI middleware of the REST app: body limits, request counting, the fast job read and the
fast submission (in front of the app: ``api.rest_app``).

Plain ASGI rather than ``BaseHTTPMiddleware``: that costs about 15% per request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import Counter
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trainyard.model import jsontext
from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.server.errors import ApiError, error_response
from trainyard.server.metrics import Metrics
from trainyard.server.submission import accepted_spec
from trainyard.server.views import job_json

if TYPE_CHECKING:
    from trainyard.server.services.jobs import JobService


class BodyLimit:
    """Refuse request bodies over a size limit with 413 before they are read into memory, and a NUL
    character in an API path or query with 422 (PostgreSQL refuses NUL in text: a job id or filter
    holding one would reach the store only to fail there with a 500)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the path and the declared length, then count the body as it is received."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/v1/") and ("\x00" in path or b"%00" in scope["query_string"]):
            where = "path" if "\x00" in path else "query"
            await error_response(
                422,
                "invalid_request",
                "the request is not valid",
                [{"field": where, "message": "must not contain NUL characters"}],
            )(scope, receive, send)
            return
        limit = self.limit_for(path)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await error_response(
                    413, "payload_too_large", f"request body is over the {limit} byte limit"
                )(scope, receive, send)
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


class RequestCounts:
    """``trainyard_http_requests`` by method and status, each counter looked up once (``labels()``
    takes a lock and builds the label tuple on every call)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._counters: dict[tuple[str, int], Counter] = {}

    def count(self, method: str, status: int) -> None:
        """One more response of ``status`` to a ``method`` request."""
        counter = self._counters.get((method, status))
        if counter is None:
            counter = self._counters[method, status] = self.metrics.http_requests.labels(method, str(status))
        counter.inc()


class CountRequests:
    """Count requests by method and status."""

    def __init__(self, app: ASGIApp, counts: RequestCounts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; count its response's status as it starts."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                self.counts.count(scope["method"], msg["status"])
            await send(msg)

        await self.app(scope, receive, counting_send)


_JOB_PREFIX = "/v1/jobs/"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastJobReads:
    """GET /v1/jobs/{id}, the route every CLI, UI and SDK poll, served in front of the whole app:
    without routing, dependency injection, Starlette's and FastAPI's own middleware (FastAPI alone
    looks up three OpenTelemetry providers in ``os.environ`` on every request). Its answers are
    counted in the same ``RequestCounts`` as ``CountRequests`` (inside the app) counts the rest.
    Anything unusual (no or bad token, unknown job, an error) goes on to the regular route, which
    answers with the same body or the documented error."""

    def __init__(
        self,
        app: ASGIApp,
        authenticate: Callable[[str], Awaitable[User | None]],
        job_view: Callable[[User, str], Awaitable[dict[str, Any]]],
        counts: RequestCounts,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.job_view = job_view
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a plain GET of one job here when everything is in order; else pass it on."""
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            path: str = scope["path"]
            job_id = path[len(_JOB_PREFIX) :] if path.startswith(_JOB_PREFIX) else ""
            if job_id and "/" not in job_id:
                body = await self._view(scope, job_id)
                if body is not None:
                    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
                    self.counts.count("GET", 200)
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    async def _view(self, scope: Scope, job_id: str) -> bytes | None:
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if not auth.startswith(b"Bearer "):
            return None
        try:
            user = await self.authenticate(auth[7:].decode("latin-1").strip())
            if user is None:
                return None
            view = await self.job_view(user, job_id)
        except Exception:
            return None  # the regular route answers (404, 503, ...) in the documented shape
        return orjson.dumps(view)  # the same compact UTF-8 JSON as json.dumps, several times faster


class _HeldWrites:
    """A transport that holds what is written (and a close) until ``release``; all else passes on."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def close(self) -> None:
        self.closed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def release(self) -> None:
        if self.parts:
            self.transport.write(b"".join(self.parts))
        if self.closed:
            self.transport.close()


async def one_write(responding: Awaitable[None], send: Send) -> None:
    """Await ``responding`` (a whole response sent through ``send``) with its head and body written
    to the socket in one ``write``, not the two uvicorn makes (a send() system call and a packet
    each): under the submit bench that second write cost the control plane about 0.1 ms of CPU per
    submission. Where ``send`` is not a uvicorn cycle with a ``transport``, the response goes out
    as it would anyway; a close that uvicorn asks for follows the write."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not callable(getattr(transport, "write", None)):
        await responding
        return
    held = _HeldWrites(transport)
    cycle.transport = held  # type: ignore[union-attr]
    try:
        await responding
    finally:
        cycle.transport = transport  # type: ignore[union-attr]
        held.release()


SUBMIT_FAILED = "trainyard.submit_failed"
"""The scope key under which ``FastSubmits`` hands the route an exception of ``JobService.submit``
(raised there in place of submitting again, so the app's handlers answer it)."""

_JOBS_PATH = "/v1/jobs"


class FastSubmits:
    """POST /v1/jobs served in front of the app, as ``FastJobReads`` serves reads: the same checks
    in the same order, then ``JobService.submit`` and the route's own ``JSONResponse``, without
    routing, dependency injection and five layers of middleware (half of a submission's time on the
    event loop). Anything unusual (no or bad token, a bad Idempotency-Key, body or spec, a spec this
    caller cannot run, no or too large Content-Length) goes on, body and all, to the regular route,
    which answers it. ``submit`` has side effects (a rate-limit token, maybe a job), so its errors are
    not submitted again: the route raises them (``SUBMIT_FAILED``) and the app's handlers answer."""

    def __init__(
        self,
        app: ASGIApp,
        authenticate: Callable[[str], Awaitable[User | None]],
        jobs: JobService,
        counts: RequestCounts,
        max_body: int,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.jobs = jobs
        self.counts = counts
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Submit here when everything is in order; else pass the request on."""
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != _JOBS_PATH
            or scope["query_string"]
        ):
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)  # the first of a repeated header, as Starlette reads it
        length = headers.get(b"content-length", b"")
        if not length.isdigit() or int(length) > self.max_body:
            await self.app(scope, receive, send)  # BodyLimit and the route answer
            return
        raw, complete = await self._body(receive)
        if complete:
            accepted = await self._accepted(headers, raw)
            if accepted is not None:
                user, spec, key = accepted
                try:
                    result = await self.jobs.submit(user, spec, key)
                    status = 201 if result.created else 200
                    # The route's JSONResponse, byte for byte (its json.dumps arguments), made faster.
                    body = jsontext.dumps(job_json(result.job), ensure_ascii=False, allow_nan=False)
                    response = Response(body, status_code=status, media_type="application/json")
                except Exception as e:
                    scope = {**scope, SUBMIT_FAILED: e}
                else:
                    self.counts.count("POST", status)
                    await one_write(response(scope, receive, send), send)
                    return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": not complete}

        await self.app(scope, replay, send)

    async def _body(self, receive: Receive) -> tuple[bytes, bool]:
        """The request's body, and whether that is all of it (not: a disconnect, or over the limit)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return b"".join(chunks), False
            chunk = msg.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body:
                return b"".join(chunks), False
            if not msg.get("more_body", False):
                return b"".join(chunks), True

    async def _accepted(
        self, headers: dict[bytes, bytes], raw: bytes
    ) -> tuple[User, JobSpec, str | None] | None:
        """The caller, spec and Idempotency-Key when the route would go on to submit; else None."""
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if not auth.startswith("Bearer "):
            return None
        key_raw = headers.get(b"idempotency-key")
        key = None if key_raw is None else key_raw.decode("latin-1")
        try:
            user = await self.authenticate(auth[len("Bearer ") :].strip())
            if user is None:
                return None
            # The route's own checks (``submission.accepted_spec``), so the two paths cannot drift.
            spec = await accepted_spec(self.jobs, user, key, raw)
        except Exception:
            return None  # the route answers it (401, 400, 403, 422, 503, ...) in the documented shape
        return user, spec, key
