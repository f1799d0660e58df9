"""A submission on an idle fleet reaches the agent because it wakes the scheduler, not because the
scheduler's timer comes round: here the timer is an hour, so only the wake-up can place the jobs."""

from __future__ import annotations

from pathlib import Path

from tests.harness import platform, wait_status

TRIVIAL = {"command": ["true"], "resources": {"cpu": 0.1, "memory": "16Mi"}}


def test_each_submission_wakes_the_scheduler_on_an_idle_fleet(tmp_path: Path) -> None:
    with platform(tmp_path, scheduler_interval=3600.0, heartbeat_interval=1.0) as (cp, _), cp.client() as c:
        # One after another, each on a fleet idle again: every job needs a wake-up of its own.
        for _ in range(3):
            r = c.post("/v1/jobs", json=TRIVIAL)
            assert r.status_code == 201, r.text
            job = wait_status(c, r.json()["id"], {"SUCCEEDED", "FAILED"}, timeout=60)
            assert job["status"] == "SUCCEEDED", job
