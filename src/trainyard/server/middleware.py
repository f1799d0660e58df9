"""Plain ASGI middleware of the REST app: body limits, request counting and the fast job read (in
front of the app: ``api.rest_app``).

Plain ASGI rather than ``BaseHTTPMiddleware``: that costs about 15% per request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trainyard.model.records import User
from trainyard.server.errors import ApiError, error_response
from trainyard.server.metrics import Metrics


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
