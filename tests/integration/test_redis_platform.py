"""The platform on PostgreSQL + Redis: heartbeats, status cache, tiered limits and the live log tail in
Redis, and the fallback to PostgreSQL while the Redis server (started by the test) is down."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import job_status, platform, wait_for, wait_status
from tests.redis_server import RedisServer

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def submit(c: httpx.Client, command: list[str], **kw: object) -> str:
    r = c.post("/v1/jobs", json={"command": command, **kw})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_redis_backs_heartbeats_status_limits_and_live_logs(
    tmp_path: Path, pg_url: str, redis_server: RedisServer
) -> None:
    r = redis_server.client()
    with (
        platform(tmp_path, database_url=pg_url, redis_url=redis_server.url) as (cp, _),
        cp.client() as c,
    ):
        worker_id = c.get("/v1/workers").json()["workers"][0]["id"]
        ttl = r.pttl(f"worker:heartbeat:{worker_id}")
        assert 0 < ttl <= 3 * 0.3 * 1000 + 50  # TTL of three heartbeat intervals

        # Status reads: a miss fills the cache; each commit invalidates it; readers never see the past.
        job_id = submit(c, [sys.executable, "-c", "import time; time.sleep(0.5)"])
        first = c.get(f"/v1/jobs/{job_id}").json()
        # Filled by the read, unless a commit (the lease) invalidated it since: then it moved on.
        filled = r.exists(f"job:status:{job_id}")
        assert filled or first["status"] != "PENDING" or job_status(c, job_id) != "PENDING"
        done = wait_status(c, job_id, DONE)
        assert done["status"] == "SUCCEEDED"
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "SUCCEEDED"
        assert r.exists(f"job:status:{job_id}")
        assert b'"SUCCEEDED"' in (r.get(f"job:status:{job_id}") or b"")

        # Another team's user gets 404, even though the view is cached.
        bob = c.post("/v1/admin/users", json={"name": "bob", "team": "nlp"}).json()["token"]
        with cp.client(bob) as cb:
            assert cb.get(f"/v1/jobs/{job_id}").status_code == 404

        # Tiers: a free user gets 5 submissions a day, then 429 with Retry-After.
        created = c.post("/v1/admin/users", json={"name": "fran", "team": "vision", "tier": "free"})
        assert created.status_code == 201 and created.json()["tier"] == "free"
        bad = c.post("/v1/admin/users", json={"name": "gil", "team": "vision", "tier": "gold"})
        assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "tier"
        with cp.client(created.json()["token"]) as cf:
            codes = [cf.post("/v1/jobs", json={"command": ["true"]}).status_code for _ in range(6)]
            assert codes == [201] * 5 + [429]
            limited = cf.post("/v1/jobs", json={"command": ["true"]})
            assert int(limited.headers["Retry-After"]) > 3600

        # Live logs through the Redis stream: lines reach a follower while the job runs.
        code = "import time\nfor i in range(4):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.3)\n"
        logged = submit(c, [sys.executable, "-c", code])
        wait_status(c, logged, {"RUNNING", *DONE})
        seen: list[tuple[float, bytes]] = []

        def follow() -> None:
            with (
                cp.client() as cl,
                cl.stream("GET", f"/v1/jobs/{logged}/logs", params={"follow": "true"}) as resp,
            ):
                for chunk in resp.iter_bytes():
                    seen.append((time.monotonic(), chunk))

        t = threading.Thread(target=follow)
        t.start()
        t.join(30)
        text = b"".join(chunk for _, chunk in seen)
        assert text == b"".join(f"tick {i}\n".encode() for i in range(4)), text
        assert r.keys(f"log:{logged}:*"), "the live tail went through Redis"


def test_platform_keeps_working_while_redis_is_down(
    tmp_path: Path, pg_url: str, redis_server: RedisServer
) -> None:
    with (
        platform(tmp_path, agents=1, database_url=pg_url, redis_url=redis_server.url) as (cp, _),
        cp.client() as c,
    ):
        before = submit(c, ["true"])
        assert wait_status(c, before, DONE)["status"] == "SUCCEEDED"
        c.get(f"/v1/jobs/{before}")  # cached now

        redis_server.stop()
        # Several heartbeat intervals pass on the fallback: the worker must not be declared dead,
        # and jobs are accepted, placed and finished.
        jobs = [submit(c, [sys.executable, "-c", f"print({i})"]) for i in range(5)]
        for j in jobs:
            assert wait_status(c, j, DONE, 30)["status"] == "SUCCEEDED"
        time.sleep(1.5)  # five heartbeat intervals
        workers = c.get("/v1/workers").json()["workers"]
        assert [w["status"] for w in workers] == ["ALIVE"]
        assert b"3" in c.get(f"/v1/jobs/{jobs[3]}/logs").content
        # A job that finished while Redis was down reads as finished (its invalidation was remembered).
        assert c.get(f"/v1/jobs/{before}").json()["status"] == "SUCCEEDED"

        redis_server.start()
        worker_id = workers[0]["id"]
        r = redis_server.client()
        wait_for(lambda: r.exists(f"worker:heartbeat:{worker_id}"), 10, 0.1, "heartbeats in Redis again")
        after = submit(c, ["true"])
        assert wait_status(c, after, DONE)["status"] == "SUCCEEDED"
        assert c.get(f"/v1/jobs/{after}").json()["status"] == "SUCCEEDED"
        wait_for(lambda: r.exists(f"job:status:{after}"), 5, 0.1, "the status cache in use again")
        assert [w["status"] for w in c.get("/v1/workers").json()["workers"]] == ["ALIVE"]
