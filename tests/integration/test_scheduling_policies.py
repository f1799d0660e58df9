"""Scheduler v2 on the real platform: team quotas hold, and an urgent job preempts a preemptible one
(SIGTERM, requeued as PREEMPTED without using a try) when nothing else would make it fit."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from tests.harness import ControlPlane, platform, wait_for, wait_status

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    args = ("--gpus", "4", "--gpu-type", "a100", "--cpus", "8", "--memory", "8Gi")
    with platform(tmp_path_factory.mktemp("policies"), agents=1, agent_args=args) as (cp, _):
        yield cp


def gpu_job(c: httpx.Client, gpus: int, **spec: object) -> str:
    body = {"command": ["sleep", "300"], "resources": {"cpu": 0.5, "memory": "64Mi", "gpu": gpus}, **spec}
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def wait_running_for(c: httpx.Client, job_id: str, seconds: float) -> None:
    """Until the job's current attempt has run ``seconds`` by its recorded start: the victim choice
    below is about how much work each job would lose, which only time running makes."""

    def ran_long_enough() -> bool:
        started = c.get(f"/v1/jobs/{job_id}").json()["attempts"][-1]["started_at"]
        return started is not None and time.time() - datetime.fromisoformat(started).timestamp() >= seconds

    wait_for(ran_long_enough, seconds + 20, 0.1, f"job {job_id} to run {seconds:g}s")


def test_team_gpu_quota_is_never_exceeded(cp: ControlPlane) -> None:
    with cp.client() as admin:
        assert admin.put("/v1/admin/teams/vision", json={"gpu_quota": 2}).status_code == 200
        token = admin.post("/v1/admin/users", json={"name": "vera", "team": "vision"}).json()["token"]
        with cp.client(token) as c:
            jobs = [gpu_job(c, 1) for _ in range(3)]
            wait_for(lambda: sum(c.get(f"/v1/jobs/{j}").json()["status"] == "RUNNING" for j in jobs) == 2, 20)
            waiting = next(j for j in jobs if c.get(f"/v1/jobs/{j}").json()["status"] == "PENDING")
            reason = wait_for(lambda: c.get(f"/v1/jobs/{waiting}").json()["pending_reason"], 10)
            assert "quota" in reason and "vision" in reason, reason
            # Raising the quota lets it run.
            assert admin.put("/v1/admin/teams/vision", json={"gpu_quota": 3}).status_code == 200
            wait_status(c, waiting, {"RUNNING"}, 20)
            for j in jobs:
                c.delete(f"/v1/jobs/{j}")
            for j in jobs:
                wait_status(c, j, DONE, 20)


def test_urgent_job_preempts_a_preemptible_one(cp: ControlPlane) -> None:
    with cp.client() as c:
        victim = gpu_job(c, 4, priority="low", preemptible=True, name="victim")
        wait_status(c, victim, {"RUNNING"}, 20)
        urgent = gpu_job(c, 4, priority="urgent", name="urgent")
        wait_status(c, urgent, {"RUNNING"}, 30)
        v = c.get(f"/v1/jobs/{victim}").json()
        assert v["status"] == "PENDING", v
        assert v["attempts"][0]["status"] == "PREEMPTED", v["attempts"]
        assert "preempted" in (v["attempts"][0]["reason"] or ""), v["attempts"][0]
        # A preemption uses no try: the job may run again when the GPUs free up.
        c.delete(f"/v1/jobs/{urgent}")
        assert wait_status(c, victim, {"RUNNING"}, 30)["attempt"] == 2
        c.delete(f"/v1/jobs/{victim}")
        wait_status(c, victim, DONE, 20)


def test_a_preempted_job_keeps_its_place_in_its_team_queue(cp: ControlPlane) -> None:
    """A job preempted while a job of its team and priority waited runs again before that job (it
    keeps ``queued_at``, as Slurm and Kueue requeue evicted work), not after it."""
    with cp.client() as c:
        victim = gpu_job(c, 4, priority="low", preemptible=True, name="victim")
        wait_status(c, victim, {"RUNNING"}, 20)
        later = gpu_job(c, 4, priority="low", preemptible=True, name="later")
        wait_for(lambda: c.get(f"/v1/jobs/{later}").json()["queue_position"] == 1, 10)
        urgent = gpu_job(c, 4, priority="urgent", name="urgent-3")
        wait_status(c, urgent, {"RUNNING"}, 30)
        assert c.get(f"/v1/jobs/{victim}").json()["attempts"][0]["status"] == "PREEMPTED"
        # Back in the queue ahead of the job submitted after it.
        wait_for(lambda: c.get(f"/v1/jobs/{victim}").json()["queue_position"] == 1, 10)
        assert c.get(f"/v1/jobs/{later}").json()["queue_position"] == 2
        c.delete(f"/v1/jobs/{urgent}")
        assert wait_status(c, victim, {"RUNNING"}, 30)["attempt"] == 2
        assert c.get(f"/v1/jobs/{later}").json()["status"] == "PENDING"
        for j in (victim, later, urgent):
            c.delete(f"/v1/jobs/{j}")
        for j in (victim, later, urgent):
            wait_status(c, j, DONE, 20)


def test_non_preemptible_jobs_are_not_preempted(cp: ControlPlane) -> None:
    with cp.client() as c:
        steady = gpu_job(c, 4, priority="low", name="steady")
        wait_status(c, steady, {"RUNNING"}, 20)
        urgent = gpu_job(c, 4, priority="urgent", name="urgent-2")
        reason = wait_for(lambda: c.get(f"/v1/jobs/{urgent}").json()["pending_reason"], 10)
        assert c.get(f"/v1/jobs/{steady}").json()["status"] == "RUNNING"
        assert c.get(f"/v1/jobs/{urgent}").json()["status"] == "PENDING", reason
        for j in (steady, urgent):
            c.delete(f"/v1/jobs/{j}")
        for j in (steady, urgent):
            wait_status(c, j, DONE, 20)


def test_pending_jobs_show_queue_position_and_estimated_start(cp: ControlPlane) -> None:
    """Running jobs are bounded by max_runtime: a waiting job's estimate is when the GPUs it needs
    are free at the latest, and its place counts only the jobs still waiting ahead of it."""
    with cp.client() as c:
        first = gpu_job(c, 4, name="holder", max_runtime="20m")
        held = wait_status(c, first, {"RUNNING"}, 20)
        second = gpu_job(c, 4, name="next", max_runtime="10m")
        third = gpu_job(c, 4, name="after", max_runtime="10m")

        def estimated() -> dict[str, object] | None:
            v = c.get(f"/v1/jobs/{third}").json()
            return v if v["estimated_start_at"] else None

        view = wait_for(estimated, 20)
        assert view["queue_position"] == 2, view
        nxt = c.get(f"/v1/jobs/{second}").json()
        assert nxt["queue_position"] == 1, nxt
        started = datetime.fromisoformat(held["started_at"]).timestamp()
        assert abs(datetime.fromisoformat(nxt["estimated_start_at"]).timestamp() - (started + 1200)) < 5
        assert abs(datetime.fromisoformat(view["estimated_start_at"]).timestamp() - (started + 1800)) < 5
        listed = {j["id"]: j for j in c.get("/v1/jobs", params={"status": "PENDING"}).json()["jobs"]}
        assert listed[third]["queue_position"] == 2, listed[third]
        assert c.get(f"/v1/jobs/{first}").json()["queue_position"] is None
        # The holder ends: the next job starts and the last one moves up.
        c.delete(f"/v1/jobs/{first}")
        wait_status(c, second, {"RUNNING"}, 30)
        wait_for(lambda: c.get(f"/v1/jobs/{third}").json()["queue_position"] == 1, 10)
        for j in (first, second, third):
            c.delete(f"/v1/jobs/{j}")
        for j in (first, second, third):
            wait_status(c, j, DONE, 20)


SAVER = (
    "import time, trainyard.job as tj\n"
    "step = 0\n"
    "while True:\n"
    "    step += 1\n"
    "    tj.save_checkpoint(str(step).encode(), step=step)\n"
    "    time.sleep(0.2)\n"
)


def test_preemption_takes_the_victim_that_loses_the_least_work(cp: ControlPlane) -> None:
    """The job that has run longer but checkpointed a moment ago loses less than a younger one that
    never checkpointed: its agent reports the checkpoint times, and the scheduler evicts it."""
    with cp.client() as c:
        r = c.post(
            "/v1/jobs",
            json={
                "command": [sys.executable, "-c", SAVER],
                "resources": {"cpu": 0.5, "memory": "256Mi", "gpu": 2},
                "priority": "low",
                "preemptible": True,
                "name": "saver",
            },
        )
        saver = r.json()["id"]
        wait_status(c, saver, {"RUNNING"}, 20)
        wait_running_for(c, saver, 3.0)
        idle = gpu_job(c, 2, priority="low", preemptible=True, name="never-checkpoints")
        wait_status(c, idle, {"RUNNING"}, 20)
        wait_running_for(c, idle, 3.0)  # older than a heartbeat-stale checkpoint time, younger than the saver
        urgent = gpu_job(c, 2, priority="urgent", name="urgent-3")
        wait_status(c, urgent, {"RUNNING"}, 30)
        s = c.get(f"/v1/jobs/{saver}").json()
        assert s["attempts"][0]["status"] == "PREEMPTED", s["attempts"]
        assert c.get(f"/v1/jobs/{idle}").json()["status"] == "RUNNING"
        for j in (saver, idle, urgent):
            c.delete(f"/v1/jobs/{j}")
        for j in (saver, idle, urgent):
            wait_status(c, j, DONE, 30)
