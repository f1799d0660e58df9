"""A scripted fake of the REST API behind httpx.MockTransport, shared by the SDK and CLI tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx

BASE = "http://trainyard.test"
Handler = Callable[[httpx.Request], httpx.Response]


def error(
    status: int, code: str, message: str, details: list[dict[str, str]] | None = None
) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message, "details": details or []}}
    )


def job(job_id: str = "j-1", status: str = "PENDING", **kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": job_id,
        "name": "demo",
        "status": status,
        "user": "alice",
        "team": "vision",
        "priority": "normal",
        "pool": None,
        "spec": {"command": ["python", "train.py"], "resources": {"cpu": 1.0, "memory": "512Mi", "gpu": 0}},
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
        "started_at": None,
        "finished_at": None,
        "attempt": 0,
        "exit_code": None,
        "reason": None,
        "pending_reason": None,
        "worker_id": None,
        "attempts": [],
        "urls": {},
    }
    data.update(kw)
    return data


def attempt(number: int, finished: bool = True, **kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "number": number,
        "worker_id": "w-1",
        "status": "SUCCEEDED" if finished else "RUNNING",
        "outcome": "succeeded" if finished else None,
        "gpu_indices": [],
        "scheduled_at": "2024-05-01T12:00:01Z",
        "started_at": "2024-05-01T12:00:02Z",
        "finished_at": "2024-05-01T12:00:09Z" if finished else None,
        "exit_code": 0 if finished else None,
        "reason": None,
        "stderr_tail": "",
        "log_bytes": 0,
    }
    data.update(kw)
    return data


class DropStream(httpx.SyncByteStream):
    """A body that sends some chunks and then fails like a connection cut by a server restart."""

    def __init__(self, *chunks: bytes, drop: bool = True) -> None:
        self.chunks = chunks
        self.drop = drop

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.drop:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


class FakeAPI:
    """Routes (method, path) to handlers; a list of handlers is consumed one per request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Handler | httpx.Response | dict[str, Any]]] = {}
        self.sticky: dict[tuple[str, str], Handler | httpx.Response | dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, *answers: Handler | httpx.Response | dict[str, Any]) -> None:
        """Answer in order; the last answer repeats."""
        self.routes[(method, path)] = list(answers[:-1])
        self.sticky[(method, path)] = answers[-1]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        if key not in self.sticky:
            return error(404, "not_found", f"no route {key}")
        queue = self.routes[key]
        answer = queue.pop(0) if queue else self.sticky[key]
        if isinstance(answer, httpx.Response):
            # A Response's stream can only be read once; rebuild for repeated answers.
            return httpx.Response(
                answer.status_code, headers=answer.headers, stream=answer.stream, request=request
            )
        if isinstance(answer, dict):
            return httpx.Response(200, json=answer)
        return answer(request)

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def body(self, request: httpx.Request) -> Any:
        return json.loads(request.content)
