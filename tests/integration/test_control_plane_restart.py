"""The control plane restarts under running work: nothing accepted is lost, running jobs carry on."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.harness import Agent, ControlPlane, wait_for, wait_status

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def test_restart_keeps_jobs_and_reattaches_running_ones(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cp = ControlPlane(home).start()
    agent = Agent(cp, "agent-1")
    try:
        with cp.client() as c:
            code = "import time\nfor i in range(6):\n    print('tick', i, flush=True)\n    time.sleep(0.5)\n"
            running = c.post("/v1/jobs", json={"command": [sys.executable, "-c", code]}).json()["id"]
            queued = [
                c.post("/v1/jobs", json={"command": ["true"], "resources": {"cpu": 64}}).json()["id"]
                for _ in range(3)
            ]
            wait_status(c, running, {"RUNNING"}, 30)
        cp.stop()
        cp = ControlPlane(home, port=cp.port, grpc_port=cp.grpc_port).start()
        with cp.client() as c:
            # Every accepted job is still there; the running one finishes on its original attempt.
            for job_id in queued:
                assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "PENDING"
            job = wait_status(c, running, DONE, 30)
            assert job["status"] == "SUCCEEDED" and len(job["attempts"]) == 1
            expected = "".join(f"tick {i}\n" for i in range(6)).encode()
            wait_for(lambda: c.get(f"/v1/jobs/{running}/logs").content == expected, 10, 0.1, "the whole log")
            # The agent reconnected: new work still flows to it.
            again = c.post("/v1/jobs", json={"command": ["true"]}).json()["id"]
            assert wait_status(c, again, DONE, 30)["status"] == "SUCCEEDED"
    finally:
        agent.stop()
        cp.stop()
