"""POST /v1/jobs answered in front of the app (``middleware.FastSubmits``): the same bytes, status and
headers as the routed answer (a query string sends a request to the route), the same errors for
anything unusual, an error of the submission itself answered by the app's handlers without a second
submission, and every answer counted once."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import ControlPlane

SPEC = {"command": ["true"], "pool": "nowhere"}
ROUTED = {"_": "1"}  # any query string: FastSubmits passes the request on to the route


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("submits") / "home").start()
    yield plane
    plane.stop()


def posts(c: httpx.Client, code: int) -> float:
    text = c.get("/metrics").text
    m = re.search(rf'^trainyard_http_requests_total\{{code="{code}",method="POST"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_submission_and_its_replays_answer_as_the_route_does(cp: ControlPlane) -> None:
    with cp.client() as c:
        key = {"Idempotency-Key": uuid.uuid4().hex}
        created = c.post("/v1/jobs", json=SPEC, headers=key)
        for _ in range(10):  # the job may move between the two (the scheduler sets pending_reason)
            fast = c.post("/v1/jobs", json=SPEC, headers=key)
            routed = c.post("/v1/jobs", json=SPEC, headers=key, params=ROUTED)
            if fast.content == routed.content:
                break
        assert created.status_code == 201 and fast.status_code == routed.status_code == 200
        assert fast.content == routed.content
        assert created.json()["id"] == fast.json()["id"]
        for r in (created, fast):
            assert r.headers["content-type"] == routed.headers["content-type"] == "application/json"
            assert r.headers["content-length"] == str(len(r.content))
        # A new job by either path: the same fields and shape.
        a = c.post("/v1/jobs", json=SPEC)
        b = c.post("/v1/jobs", json=SPEC, params=ROUTED)
        assert a.status_code == b.status_code == 201
        assert a.json().keys() == b.json().keys()
        same = ("id", "urls", "created_at", "updated_at", "queued_at")  # differ from job to job
        assert {k: v for k, v in a.json().items() if k not in same} == {
            k: v for k, v in b.json().items() if k not in same
        }


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"command": ["true"], "pool": "nowhere", "priority": "nope"}', {}),  # invalid spec
        (b'{"command": []}', {}),
        (b"[1, 2]", {}),  # not an object
        (b"{nope", {}),  # not JSON
        (b'{"command": ["true"], "depends_on": [{"job": "j-nope"}]}', {}),  # no such dependency
        (b'{"command": ["true"], "team": "other"}', {}),  # no such team
        (b'{"command": ["true"], "secrets": ["nope"]}', {}),
        (b'{"command": ["true"]}', {"Idempotency-Key": "x" * 257}),
        (b'{"command": ["true"], "pool": "nowhere"}', {"Authorization": "Bearer nope"}),
        (b'{"command": ["true"], "pool": "nowhere"}', {"Authorization": "Basic nope"}),
    ],
)
def test_anything_unusual_gets_the_routes_answer(
    cp: ControlPlane, body: bytes, headers: dict[str, str]
) -> None:
    with cp.client() as c:
        fast = c.post("/v1/jobs", content=body, headers={"Content-Type": "application/json", **headers})
        routed = c.post(
            "/v1/jobs", content=body, headers={"Content-Type": "application/json", **headers}, params=ROUTED
        )
        assert fast.status_code == routed.status_code
        assert 400 <= fast.status_code < 500
        assert fast.content == routed.content


def test_a_body_over_the_limit_is_refused(cp: ControlPlane) -> None:
    with cp.client() as c:
        big = b'{"command": ["true"], "name": "' + b"x" * (cp.settings.max_body + 10) + b'"}'
        assert c.post("/v1/jobs", content=big).status_code == 413


def test_a_failed_submission_is_answered_by_the_app_without_submitting_again(cp: ControlPlane) -> None:
    with cp.client() as c:
        key = {"Idempotency-Key": uuid.uuid4().hex}
        assert c.post("/v1/jobs", json=SPEC, headers=key).status_code == 201
        other = {**SPEC, "name": "another"}
        before = len(c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
        fast = c.post("/v1/jobs", json=other, headers=key)
        routed = c.post("/v1/jobs", json=other, headers=key, params=ROUTED)
        assert fast.status_code == routed.status_code == 409
        assert fast.content == routed.content
        assert fast.json()["error"]["code"] == "idempotency_conflict"
        assert len(c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]) == before


def test_each_answer_is_counted_once(cp: ControlPlane) -> None:
    with cp.client() as c:
        created, invalid = posts(c, 201), posts(c, 422)
        for _ in range(3):
            assert c.post("/v1/jobs", json=SPEC).status_code == 201
        assert c.post("/v1/jobs", json={"command": []}).status_code == 422
        assert posts(c, 201) - created == 3
        assert posts(c, 422) - invalid == 1


def test_the_rate_limit_takes_one_token_a_submission(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path / "home", submit_rate=0.01, submit_burst=3.0).start()
    try:
        with plane.client() as c:
            codes = [c.post("/v1/jobs", json=SPEC).status_code for _ in range(3)]
            limited = c.post("/v1/jobs", json=SPEC)
            routed = c.post("/v1/jobs", json=SPEC, params=ROUTED)
            assert codes == [201, 201, 201]
            for r in (limited, routed):
                assert r.status_code == 429
                assert r.json()["error"]["code"] == "rate_limited"
                assert int(r.headers["retry-after"]) >= 1
            assert len(c.get("/v1/jobs").json()["jobs"]) == 3
    finally:
        plane.stop()
