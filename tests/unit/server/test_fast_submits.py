"""``FastSubmits`` on its own: what it answers itself and what it passes on, body and all."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.unit.server.plane import Plane
from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.server.metrics import Metrics
from trainyard.server.middleware import SUBMIT_FAILED, FastSubmits, RequestCounts, one_write
from trainyard.store import SubmitResult

ALICE = User("alice", "vision", "user")


@pytest.fixture
def plane_job(plane: Plane) -> Any:
    return asyncio.run(plane.submit(command=["true"]))


class Jobs:
    def __init__(self, job: Any, error: Exception | None = None) -> None:
        self.job, self.error, self.submitted = job, error, 0

    async def check_submittable(self, user: User, spec: JobSpec) -> None:
        if spec.name == "forbidden":
            raise PermissionError("no")

    async def submit(self, user: User, spec: JobSpec, key: str | None) -> SubmitResult:
        self.submitted += 1
        if self.error is not None:
            raise self.error
        return SubmitResult(job=self.job, created=key is None)


async def _auth(token: str) -> User | None:
    return ALICE if token == "good" else None


def _call(
    mw: FastSubmits, body: bytes, headers: dict[str, str], path: str = "/v1/jobs", chunks: int = 1
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], bytes]]]:
    """What ``mw`` sent, and what it passed on (the scope and the body the app read)."""
    passed: list[tuple[dict[str, Any], bytes]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got = b""
        while True:
            msg = await receive()
            got += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        passed.append((scope, got))

    step = max(1, -(-len(body) // chunks))
    parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    mw.app = app
    asyncio.run(mw(scope, receive, send))
    return sent, passed


def _mw(jobs: Jobs) -> FastSubmits:
    return FastSubmits(None, _auth, jobs, RequestCounts(Metrics()), max_body=1000)  # type: ignore[arg-type]


def _headers(body: bytes, **more: str) -> dict[str, str]:
    return {"Authorization": "Bearer good", "Content-Length": str(len(body)), **more}


def test_a_good_submission_is_answered_here(plane_job: Any) -> None:
    jobs = Jobs(plane_job)
    body = json.dumps({"command": ["true"]}).encode()
    sent, passed = _call(_mw(jobs), body, _headers(body), chunks=3)
    assert not passed and jobs.submitted == 1
    assert sent[0]["status"] == 201
    assert json.loads(sent[1]["body"])["id"] == plane_job.id
    sent, passed = _call(_mw(jobs), body, _headers(body, **{"Idempotency-Key": "k"}))
    assert sent[0]["status"] == 200 and not passed


def test_anything_unusual_goes_on_with_its_body(plane_job: Any) -> None:
    good = json.dumps({"command": ["true"]}).encode()
    cases = [
        (good, {"Content-Length": str(len(good))}),  # no token
        (good, _headers(good, Authorization="Bearer bad")),
        (good, _headers(good, **{"Idempotency-Key": "x" * 257})),
        (b"{nope", _headers(b"{nope")),
        (b"[]", _headers(b"[]")),
        (b'{"command": []}', _headers(b'{"command": []}')),
        (
            b'{"command": ["true"], "name": "forbidden"}',
            _headers(b'{"command": ["true"], "name": "forbidden"}'),
        ),
        (good, {"Authorization": "Bearer good"}),  # no Content-Length
        (good, _headers(good, **{"Content-Length": "5000"})),  # over the limit
    ]
    for body, headers in cases:
        jobs = Jobs(plane_job)
        sent, passed = _call(_mw(jobs), body, headers)
        assert not sent and jobs.submitted == 0, headers
        assert len(passed) == 1 and SUBMIT_FAILED not in passed[0][0]
        if "Content-Length" in headers and headers["Content-Length"] != "5000":
            assert passed[0][1] == body  # replayed to the app as it came


def test_other_routes_are_not_touched(plane_job: Any) -> None:
    jobs = Jobs(plane_job)
    sent, passed = _call(_mw(jobs), b"{}", _headers(b"{}"), path="/v1/jobs/x/restart")
    assert not sent and len(passed) == 1 and jobs.submitted == 0


def test_a_failed_submission_goes_to_the_app_once(plane_job: Any) -> None:
    error = RuntimeError("database gone")
    jobs = Jobs(plane_job, error)
    body = json.dumps({"command": ["true"]}).encode()
    sent, passed = _call(_mw(jobs), body, _headers(body))
    assert not sent and jobs.submitted == 1
    assert passed[0][0][SUBMIT_FAILED] is error and passed[0][1] == body


class _Transport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.calls.append(("close", b""))

    def is_closing(self) -> bool:
        return False


class _Cycle:
    """The part of uvicorn's RequestResponseCycle that ``one_write`` uses."""

    def __init__(self, keep_alive: bool = True) -> None:
        self.transport: Any = _Transport()
        self.keep_alive = keep_alive

    async def send(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            self.transport.write(b"HEAD")
        else:
            assert not self.transport.is_closing()
            self.transport.write(msg["body"])
            if not self.keep_alive:
                self.transport.close()


@pytest.mark.parametrize("keep_alive", [True, False])
def test_one_write_sends_head_and_body_together(keep_alive: bool) -> None:
    cycle = _Cycle(keep_alive)
    real = cycle.transport

    async def respond() -> None:
        await cycle.send({"type": "http.response.start", "status": 201, "headers": []})
        await cycle.send({"type": "http.response.body", "body": b"{}"})

    asyncio.run(one_write(respond(), cycle.send))
    assert cycle.transport is real
    assert real.calls == [("write", b"HEAD{}")] + ([] if keep_alive else [("close", b"")])


def test_one_write_releases_what_was_written_when_the_response_fails() -> None:
    cycle = _Cycle()
    real = cycle.transport

    async def respond() -> None:
        await cycle.send({"type": "http.response.start", "status": 201, "headers": []})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        asyncio.run(one_write(respond(), cycle.send))
    assert cycle.transport is real and real.calls == [("write", b"HEAD")]


def test_one_write_without_a_transport_just_responds() -> None:
    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async def respond() -> None:
        await send({"type": "http.response.body", "body": b"x"})

    asyncio.run(one_write(respond(), send))
    assert sent == [{"type": "http.response.body", "body": b"x"}]
