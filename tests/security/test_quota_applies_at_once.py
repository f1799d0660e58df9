"""A team quota change applies from the scheduler's next cycle, whichever replica it went through.

Finding 9 of issue 12: the leader kept its copy of the teams for 5 s, so a quota lowered for a team
whose jobs had already run was ignored for up to 5 s: two 2-GPU jobs submitted right after
``gpu_quota: 2`` both ran. Each test first learns when the leader has just read the teams (a job
held back by one quota starts once the quota is lifted), then lowers the quota at once: on the old
code the leader's copy was then seconds from its refresh, so both jobs ran every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Agent, ControlPlane, platform, wait_for, wait_status

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
HOLDING = {"SCHEDULED", "RUNNING"}  # an attempt that holds its GPUs
GPU_AGENT = ("--gpus", "4", "--gpu-type", "a100", "--cpus", "8", "--memory", "8Gi")


def gpu_job(c: httpx.Client, gpus: int, command: list[str]) -> str:
    body = {"command": command, "resources": {"cpu": 0.5, "memory": "64Mi", "gpu": gpus}}
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def set_team(admin: httpx.Client, team: str, **changes: Any) -> None:
    r = admin.put(f"/v1/admin/teams/{team}", json=changes)
    assert r.status_code == 200, r.text


def quota_reason(c: httpx.Client, job_id: str) -> str | None:
    job = c.get(f"/v1/jobs/{job_id}").json()
    reason = job.get("pending_reason") or ""
    return reason if job["status"] == "PENDING" and "quota" in reason else None


def lower_quota_then_submit(leader: ControlPlane, admin: httpx.Client, token: str, team: str) -> None:
    """``admin`` (a client of any replica) changes the team; a member submits through the leader."""
    with leader.client(token) as c:
        # The team's jobs have already run (under a quota of 1 GPU): the leader knows the team.
        set_team(admin, team, gpu_quota=1)
        assert wait_status(c, gpu_job(c, 1, ["true"]), DONE)["status"] == "SUCCEEDED"

        # Catch the moment the leader reads the teams: a 2-GPU job held back by the quota of 1 starts
        # in the first cycle that sees the quota lifted.
        probe = gpu_job(c, 2, ["true"])
        wait_for(lambda: quota_reason(c, probe), 20, 0.05, "the probe to wait on the team's quota")
        set_team(admin, team, gpu_quota=None)
        assert wait_status(c, probe, DONE)["status"] == "SUCCEEDED"

        # Now lower the quota and submit two 2-GPU jobs at once: one runs, the other waits on the quota.
        set_team(admin, team, gpu_quota=2)
        jobs = [gpu_job(c, 2, ["sleep", "300"]) for _ in range(2)]

        def one_runs_one_waits() -> tuple[str, str] | None:
            status = {j: c.get(f"/v1/jobs/{j}").json()["status"] for j in jobs}
            holding = [j for j in jobs if status[j] in HOLDING]
            assert len(holding) <= 1, f"both 2-GPU jobs hold GPUs under gpu_quota 2: {status}"
            waiting = [j for j in jobs if quota_reason(c, j)]
            if len(holding) == 1 and status[holding[0]] == "RUNNING" and len(waiting) == 1:
                return holding[0], waiting[0]
            return None

        _, waiting = wait_for(one_runs_one_waits, 20, 0.05, "one job running, one held by the quota")
        # Raising it applies as quickly.
        set_team(admin, team, gpu_quota=4)
        wait_status(c, waiting, {"RUNNING"}, 20)
        for j in jobs:
            c.delete(f"/v1/jobs/{j}")
        for j in jobs:
            wait_status(c, j, DONE, 20)


def new_user(admin: httpx.Client, name: str, team: str) -> str:
    r = admin.post("/v1/admin/users", json={"name": name, "team": team})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def test_lowered_quota_applies_from_the_next_cycle(tmp_path: Path) -> None:
    with platform(tmp_path, agents=1, agent_args=GPU_AGENT) as (cp, _), cp.client() as admin:
        token = new_user(admin, "quinn", "quota-team")
        lower_quota_then_submit(cp, admin, token, "quota-team")


@pytest.fixture
def two_replicas(tmp_path: Path, pg_url: str) -> Iterator[tuple[ControlPlane, ControlPlane]]:
    """Two control-plane replicas on one PostgreSQL database, the first one leading."""
    home = tmp_path / "home"
    settings: dict[str, Any] = {"database_url": pg_url}
    first = ControlPlane(home, **settings).start()
    agent: Agent | None = None
    second: ControlPlane | None = None
    try:
        wait_for(lambda: httpx.get(f"{first.url}/healthz").json()["leader"], 15, 0.05, "the first to lead")
        second = ControlPlane(home, **settings).start()
        assert not httpx.get(f"{second.url}/healthz").json()["leader"]
        agent = Agent(first, "gpu-1", *GPU_AGENT)
        with first.client() as c:
            wait_for(
                lambda: [w for w in c.get("/v1/workers").json()["workers"] if w["status"] == "ALIVE"],
                30,
                0.05,
                "the agent to register",
            )
        yield first, second
    finally:
        if agent is not None:
            agent.stop()
        if second is not None:
            second.stop()
        first.stop()


def test_quota_lowered_through_another_replica_applies_from_the_next_cycle(
    two_replicas: tuple[ControlPlane, ControlPlane],
) -> None:
    leader, other = two_replicas
    with other.client() as oc:
        token = new_user(oc, "quentin", "quota-team-2")
        lower_quota_then_submit(leader, oc, token, "quota-team-2")
