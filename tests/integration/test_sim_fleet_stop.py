"""A fleet stopped while its agents hold many jobs each (the overloaded fleet's stop ended 13,539
attempts LOST): every attempt is reported PREEMPTED with its checkpoint before the agents go, the
jobs are requeued, and the control plane never declares an agent dead over it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Agent, ControlPlane, wait_for

from .test_sim_fleet import _jobs, _submit

pytestmark = pytest.mark.timeout(240)

AGENTS = 2
JOBS = 64  # 32 per agent, each agent with its 4 HTTP connections


def test_a_fleet_stopped_with_many_jobs_reports_every_attempt_preempted(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path / "home", heartbeat_interval=1.0).start()
    fleet = Agent(
        cp,
        "sim",
        "--executor",
        "sim",
        "--agents",
        str(AGENTS),
        "--work-dir",
        str(tmp_path / "fleet"),
        "--sim-shape",
        "32/128Gi",
        "--preempt-grace",
        "5",
    )
    try:
        with cp.client() as c:
            wait_for(
                lambda: sum(w["status"] == "ALIVE" for w in c.get("/v1/workers").json()["workers"]) >= AGENTS,
                60,
                0.1,
                "the simulated agents to register",
            )
            ids = _submit(
                c,
                "duration=10m,checkpoint_every=0.5s,checkpoint_bytes=4k,log_rate=20/s",
                JOBS,
                preemptible=True,
            )

            def running() -> dict[str, dict[str, Any]] | None:
                js = _jobs(c, ids)
                return js if all(j["status"] == "RUNNING" for j in js.values()) else None

            wait_for(running, 90, 0.2, "every job to run")
            fleet.stop()

            def requeued() -> dict[str, dict[str, Any]] | None:
                js = _jobs(c, ids)
                return js if all(j["status"] == "PENDING" for j in js.values()) else None

            jobs = wait_for(requeued, 60, 0.5, "every job to be requeued")
            outcomes = {j["attempts"][0]["outcome"] for j in jobs.values()}
            assert outcomes == {"preempted"}, outcomes
            for job_id, job in jobs.items():
                (a,) = job["attempts"]
                assert "abandoned" not in (a["reason"] or ""), (job_id, a)
            workers = c.get("/v1/workers").json()["workers"]
            assert not any(w["status"] == "DEAD" for w in workers), workers
        # Each came back with the checkpoint its next attempt resumes from.
        with sqlite3.connect(cp.home / "trainyard.db") as db:
            keys = dict(db.execute("SELECT job_id, checkpoint_key FROM job_attempts").fetchall())
        assert set(keys) == set(ids) and all(keys.values()), keys
    finally:
        fleet.stop()
        cp.stop()
    out = fleet.output()
    assert "gave up waiting" not in out and "Traceback" not in out, out[-3000:]
    lines = (tmp_path / "fleet" / "sim-attempts.jsonl").read_text().splitlines()
    assert {r["exit"] for r in map(json.loads, lines)} == {143}
