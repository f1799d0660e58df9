"""Two `yard server` replicas on one PostgreSQL, Redis and Kafka (each started by the test): they share
the work, a client of one sees what happened through the other, and killing the leader (kill -9)
hands scheduling to the survivor with no job placed twice."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.harness import Agent, ServerProcess, wait_for, wait_status
from tests.kafka_broker import KafkaBroker
from tests.redis_server import RedisServer

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


@pytest.fixture
def services(tmp_path: Path, pg_url: str) -> Iterator[dict[str, str]]:
    redis = RedisServer()
    redis.start()
    try:
        with KafkaBroker(tmp_path / "kafka") as kafka:
            yield {
                "TRAINYARD_DATABASE_URL": pg_url,
                "TRAINYARD_REDIS_URL": redis.url,
                "TRAINYARD_KAFKA_BOOTSTRAP": kafka.bootstrap,
                "TRAINYARD_WORKER_TOKEN": "tyb_replica-test-bootstrap",
                "TRAINYARD_HEARTBEAT_INTERVAL": "0.5",
                "TRAINYARD_CANCEL_GRACE": "2",
                "TRAINYARD_SCHEDULER_INTERVAL": "0.2",
                "TRAINYARD_RESTART_GRACE": "3",
            }
    finally:
        redis.stop()


class EventFollower:
    """A client of one replica following GET /v1/events (SSE) in a thread."""

    def __init__(self, url: str, token: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, args=(url, token), daemon=True)
        self._thread.start()

    def _run(self, url: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with (
            contextlib.suppress(httpx.HTTPError),  # the replica stops at the end of the test
            httpx.Client(base_url=url, headers=headers, timeout=None) as c,
            c.stream("GET", "/v1/events") as resp,
        ):
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    self.events.append({"seen": time.time(), **json.loads(line[6:])})

    def finished(self) -> set[str]:
        return {e["job_id"] for e in self.events if e["to_status"] in DONE}


def follow_log(c: httpx.Client, job_id: str) -> bytes:
    with c.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"}) as resp:
        return b"".join(resp.iter_bytes())


def submit(c: httpx.Client, command: list[str]) -> str:
    r = c.post("/v1/jobs", json={"command": command})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_replicas_share_work_and_survive_the_leader(tmp_path: Path, services: dict[str, str]) -> None:
    home = tmp_path / "home"
    a = ServerProcess(home, services, "server-a").wait_ready()
    b = ServerProcess(home, services, "server-b").wait_ready()
    agents: list[Agent] = []
    try:
        wait_for(lambda: a.is_leader() != b.is_leader(), 10, 0.1, "exactly one leader")
        leader, other = (a, b) if a.is_leader() else (b, a)
        token = (home / "token").read_text().strip()
        # Each agent knows both replicas; each talks to a different one first.
        for name, first, second in (("agent-1", leader, other), ("agent-2", other, leader)):
            cp = SimpleNamespace(grpc=f"{first.grpc},{second.grpc}", home=home)
            agents.append(
                Agent(
                    cp,  # type: ignore[arg-type]
                    name,
                    "--cpus",
                    "4",
                    "--memory",
                    "4Gi",
                    extra_env={"TRAINYARD_WORKER_TOKEN": services["TRAINYARD_WORKER_TOKEN"]},
                )
            )
        with leader.client(token) as cl, other.client(token) as co:
            wait_for(lambda: len(cl.get("/v1/workers").json()["workers"]) == 2, 30, 0.1, "both agents")
            follower = EventFollower(other.url, token)
            time.sleep(0.5)  # the follower's stream is open

            # Work submitted through either replica runs on both workers.
            jobs = [submit(cl, ["sleep", "0.3"]) for _ in range(10)] + [
                submit(co, ["sleep", "0.3"]) for _ in range(10)
            ]
            done = [wait_status(co, j, DONE, 60) for j in jobs]
            assert {d["status"] for d in done} == {"SUCCEEDED"}
            assert len({d["attempts"][0]["worker_id"] for d in done}) == 2, "both workers got work"
            # Events committed through the leader reach the other replica's SSE client (via Kafka).
            wait_for(lambda: set(jobs) <= follower.finished(), 15, 0.1, "every finish on the other replica")

            # A running job's live log can be followed through either replica (the tail is in Redis).
            code = (
                "import time\nfor i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.3)\n"
            )
            printer = submit(cl, [sys.executable, "-c", code])
            wait_status(co, printer, {"RUNNING", *DONE}, 30)
            expected = b"line 0\nline 1\nline 2\n"
            for client in (cl, co):
                assert follow_log(client, printer) == expected, client.base_url

            # A cancel through one replica reaches a worker whose stream is on the other.
            sleeper = submit(co, ["sleep", "300"])
            wait_status(co, sleeper, {"RUNNING"}, 30)
            t0 = time.monotonic()
            assert cl.delete(f"/v1/jobs/{sleeper}").status_code == 202
            assert wait_status(co, sleeper, DONE, 15)["status"] == "CANCELLED"
            cancel_s = time.monotonic() - t0

            # kill -9 the leader while jobs run: the other replica takes over within seconds.
            running = [submit(co, ["sleep", "1"]) for _ in range(6)]
            wait_for(lambda: all(wait_status(co, j, {"RUNNING", *DONE}) for j in running), 30, 0.1, "runs")
            leader.kill()
            t_kill = time.monotonic()
            wait_for(other.is_leader, 15, 0.1, "the surviving replica to lead")
            takeover_s = time.monotonic() - t_kill
            after = [submit(co, ["true"]) for _ in range(10)]
            for j in [*running, *after]:
                job = wait_status(co, j, DONE, 60)
                assert job["status"] == "SUCCEEDED", job
            # No job placed twice: each has exactly one successful attempt, and none is still live.
            for j in [*jobs, *running, *after]:
                attempts = co.get(f"/v1/jobs/{j}").json()["attempts"]
                assert sum(x["status"] == "SUCCEEDED" for x in attempts) == 1, attempts
        print(f"cancel across replicas {cancel_s:.2f}s, leader takeover {takeover_s:.2f}s")
        assert takeover_s < 10
    finally:
        for agent in agents:
            agent.stop()
        a.stop()
        b.stop()
