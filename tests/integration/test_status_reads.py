"""GET /v1/jobs/{id} with the Redis status cache, answered in front of the app (``FastJobReads``,
its cache reads made together by ``StatusReads``): the same bytes as the routed answer, the same
errors, each team's jobs only, and every answer counted."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.harness import ControlPlane
from tests.redis_server import RedisServer, running_redis


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    server: RedisServer
    with running_redis() as server:
        plane = ControlPlane(tmp_path_factory.mktemp("reads") / "home", redis_url=server.url).start()
        yield plane
        plane.stop()


def ok_reads(c: httpx.Client) -> float:
    text = c.get("/metrics").text
    m = re.search(r'^trainyard_http_requests_total\{code="200",method="GET"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_cached_reads_answer_as_the_route_does(cp: ControlPlane) -> None:
    with cp.client() as c:
        ids = [
            c.post("/v1/jobs", json={"command": ["true"], "pool": "nowhere"}).json()["id"] for _ in range(3)
        ]
        for job_id in ids:
            miss = c.get(f"/v1/jobs/{job_id}")
            for _ in range(5):  # the job may move between the reads (the scheduler's cycle, the board)
                hit = c.get(f"/v1/jobs/{job_id}")
                routed = c.get(f"/v1/jobs/{job_id}", params={"_": "1"})  # a query string: the route answers
                if hit.content == routed.content:
                    break
            assert miss.status_code == hit.status_code == routed.status_code == 200
            assert hit.content == routed.content
            assert miss.json()["id"] == job_id
            assert hit.headers["content-type"] == routed.headers["content-type"] == "application/json"
            assert hit.json()["id"] == job_id
        for path in ("/v1/jobs/nope", "/v1/jobs/nope?_=1"):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        with httpx.Client(base_url=cp.url) as anon:
            assert anon.get(f"/v1/jobs/{ids[0]}").status_code == 401
            bad = anon.get(f"/v1/jobs/{ids[0]}", headers={"Authorization": "Bearer nope"})
            assert bad.status_code == 401


def test_concurrent_reads_each_get_their_own_job_and_are_counted(cp: ControlPlane) -> None:
    with cp.client() as c:
        ids = [
            c.post("/v1/jobs", json={"command": ["true"], "pool": "nowhere"}).json()["id"] for _ in range(8)
        ]
        before = ok_reads(c)

        def read(job_id: str) -> str:
            with cp.client() as own:
                return str(own.get(f"/v1/jobs/{job_id}").json()["id"])

        with ThreadPoolExecutor(8) as pool:
            wanted = ids * 10
            assert list(pool.map(read, wanted)) == wanted
        assert ok_reads(c) - before == len(wanted) + 1  # and the first scrape of /metrics


def test_another_teams_cached_job_is_not_found(cp: ControlPlane, tmp_path: Path) -> None:
    with cp.client() as admin:
        job_id = admin.post("/v1/jobs", json={"command": ["true"], "pool": "nowhere"}).json()["id"]
        assert admin.get(f"/v1/jobs/{job_id}").status_code == 200  # the view is cached now
        r = admin.post("/v1/admin/users", json={"name": "olga", "team": "other", "role": "user"})
        assert r.status_code == 201, r.text
        with cp.client(r.json()["token"]) as other:
            fast, routed = other.get(f"/v1/jobs/{job_id}"), other.get(f"/v1/jobs/{job_id}?_=1")
            assert fast.status_code == routed.status_code == 404
            assert fast.json() == routed.json()
