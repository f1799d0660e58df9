"""The whole path on PostgreSQL: the same control plane and agents, a PostgreSQL state store."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.harness import REPO, platform, wait_status

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def test_jobs_run_logs_artifacts_cancel_and_retry_on_postgres(tmp_path: Path, pg_url: str) -> None:
    with platform(tmp_path, agents=2, database_url=pg_url) as (cp, agents), cp.client() as c:
        tiny = c.post(
            "/v1/jobs",
            json={"command": [sys.executable, "examples/train_tiny.py", "--epochs", "2"], "cwd": str(REPO)},
            headers={"Idempotency-Key": "pg-1"},
        ).json()["id"]
        replay = c.post(
            "/v1/jobs",
            json={"command": [sys.executable, "examples/train_tiny.py", "--epochs", "2"], "cwd": str(REPO)},
            headers={"Idempotency-Key": "pg-1"},
        )
        assert replay.status_code == 200 and replay.json()["id"] == tiny
        sleeper = c.post("/v1/jobs", json={"command": ["sleep", "300"]}).json()["id"]
        wait_status(c, sleeper, {"RUNNING"})
        assert c.delete(f"/v1/jobs/{sleeper}").status_code == 202
        assert wait_status(c, sleeper, DONE, 15)["status"] == "CANCELLED"
        job = wait_status(c, tiny, DONE, 60)
        assert job["status"] == "SUCCEEDED", job
        assert b"epoch 2/2" in c.get(f"/v1/jobs/{tiny}/logs").content
        assert {a["path"] for a in c.get(f"/v1/jobs/{tiny}/artifacts").json()["artifacts"]} >= {"model.npz"}
        # A worker dies mid-run: the job is retried on the other one.
        slow = c.post(
            "/v1/jobs", json={"command": [sys.executable, "-c", "import time; time.sleep(2)"], "name": "slow"}
        ).json()["id"]
        running = wait_status(c, slow, {"RUNNING"})
        workers = {w["id"]: w["name"] for w in c.get("/v1/workers").json()["workers"]}
        victim = next(a for a in agents if a.name == workers[running["attempts"][0]["worker_id"]])
        victim.kill()
        final = wait_status(c, slow, DONE, 30)
        assert final["status"] == "SUCCEEDED" and [a["status"] for a in final["attempts"]] == [
            "LOST",
            "SUCCEEDED",
        ]
