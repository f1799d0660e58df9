"""A simulated fleet against the real control plane: 20 agents in one `yard worker --executor sim`
process, 100 jobs with known outcomes. Every job ends exactly once, as its behaviour says; a job
preempted by a drain resumes from its checkpoint elsewhere; artifacts and logs are stored."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Agent, ControlPlane, wait_for

pytestmark = pytest.mark.timeout(180)

AGENTS = 20
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def _submit(c: httpx.Client, sim: str, n: int, **extra: Any) -> list[str]:
    body = {
        "command": ["python", "train.py"],
        "env": {"YARD_SIM": sim},
        "resources": {"cpu": 1, "memory": "1Gi"},
        "retry": {"max_attempts": 1},
        **extra,
    }
    ids = []
    for _ in range(n):
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def _jobs(c: httpx.Client, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {i: c.get(f"/v1/jobs/{i}").json() for i in ids}


def test_a_simulated_fleet_runs_every_job_exactly_once(tmp_path: Path) -> None:
    # Twenty agents share one process and event loop: on a loaded machine 0.3 s heartbeats (the
    # harness's default) can be late enough for a live agent to be declared dead.
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
        "8/32Gi",
        "--sim-shape",
        "16/64Gi/2xa100",
        "--sim-regions",
        "us-east-1,eu-west-1",
        "--sim-channels",
        "3",
        "--sim-ramp",
        "1",
        "--preempt-grace",
        "5",
    )
    try:
        with cp.client() as c:

            def alive() -> list[dict[str, Any]] | None:
                ws = [w for w in c.get("/v1/workers").json()["workers"] if w["status"] == "ALIVE"]
                return ws if len(ws) >= AGENTS else None

            workers = wait_for(alive, 60, 0.1, "the simulated agents to register")
            assert sorted(w["name"] for w in workers) == [f"sim-{i:04d}" for i in range(1, AGENTS + 1)]
            assert Counter(w["capacity"]["gpu"] for w in workers) == {0: 10, 2: 10}

            # Long jobs that a drain preempts: they checkpoint and resume elsewhere.
            resumable = _submit(c, "duration=8s,checkpoint_every=0.5s,log_rate=4/s", 5)
            cancelled = _submit(c, "duration=120s,log_rate=1/s", 10)
            succeeded = _submit(c, "duration=1s..3s,log_rate=10/s,artifact_bytes=200", 60)
            failed = _submit(c, "duration=0.5s,exit=3,log_rate=0", 15)
            oom = _submit(c, "duration=30s,oom_after=0.5s,log_rate=2/s", 10)
            every = resumable + cancelled + succeeded + failed + oom
            assert len(every) == 100

            def running(ids: list[str]) -> dict[str, dict[str, Any]] | None:
                js = _jobs(c, ids)
                return js if all(j["status"] == "RUNNING" for j in js.values()) else None

            # Preempt the resumable jobs once they have checkpointed: drain the agents they run on.
            on = wait_for(lambda: running(resumable), 30, 0.1, "the resumable jobs to run")
            time.sleep(1.5)
            for wid in {j["attempts"][-1]["worker_id"] for j in on.values()}:
                r = c.post(f"/v1/admin/workers/{wid}/drain", json={"deadline": "0s"})
                assert r.status_code == 200, r.text
            wait_for(lambda: running(cancelled), 30, 0.1, "the long jobs to run")
            for job_id in cancelled:
                assert c.delete(f"/v1/jobs/{job_id}").status_code == 202

            def finished() -> dict[str, dict[str, Any]] | None:
                js = _jobs(c, every)
                return js if all(j["status"] in FINAL for j in js.values()) else None

            jobs = wait_for(finished, 90, 0.5, "every job to end")

            expected = {
                **dict.fromkeys(resumable, "SUCCEEDED"),
                **dict.fromkeys(cancelled, "CANCELLED"),
                **dict.fromkeys(succeeded, "SUCCEEDED"),
                **dict.fromkeys(failed, "FAILED"),
                **dict.fromkeys(oom, "FAILED"),
            }
            assert {i: j["status"] for i, j in jobs.items()} == expected

            # Exactly once: one final attempt each, numbered without gaps, and one terminal event.
            for job_id, job in jobs.items():
                attempts = job["attempts"]
                assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1)), job_id
                assert all(a["finished_at"] for a in attempts), job_id
                events = c.get(f"/v1/jobs/{job_id}/events").json()["events"]
                terminal = [e for e in events if e["to_status"] in FINAL]
                assert len(terminal) == 1, (job_id, events)
            for job_id in failed:
                (a,) = jobs[job_id]["attempts"]
                assert a["exit_code"] == 3 and a["reason"] == "exit code 3"
            for job_id in oom:
                (a,) = jobs[job_id]["attempts"]
                assert a["reason"].startswith("oom: ") and a["exit_code"] == 137
            for job_id in cancelled:
                assert jobs[job_id]["attempts"][-1]["outcome"] == "cancelled"

            # The drained jobs: preempted once (a checkpoint uploaded), resumed from it on another agent.
            for job_id in resumable:
                first, *_, last = jobs[job_id]["attempts"]
                assert first["outcome"] == "preempted", jobs[job_id]
                assert last["worker_id"] != first["worker_id"]
                log = c.get(f"/v1/jobs/{job_id}/logs", params={"attempt": last["number"]}).text
                assert "sim: resumed from checkpoint at" in log, log[:500]
                saved = float(log.split("resumed from checkpoint at ", 1)[1].split("s", 1)[0])
                assert 1.0 <= saved < 8.0
                assert "sim: done after 8.000s, exit 0" in log

            # Artifacts went up through presigned URLs; the logs are whole.
            for job_id in succeeded[:10]:
                (art,) = c.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]
                assert art["name"] == "sim-result.json" and art["size"] == 200
                body = httpx.get(art["url"], timeout=10).content
                assert body.startswith(b'{"job": "' + job_id.encode())
                log = c.get(f"/v1/jobs/{job_id}/logs").text
                steps = log.count("sim step=")
                assert 10 <= steps <= 30 and "sim: done after" in log
    finally:
        fleet.stop()
        cp.stop()
    out = fleet.output()
    assert "Traceback" not in out, out[-3000:]
    assert f"fleet: {AGENTS} simulated agent(s) on 3 gRPC channel(s)" in out

    # The fleet's own record of what it ran agrees with the control plane's: each attempt the
    # control plane knows was started once by the fleet, none it does not know, and ended the same way.
    lines = (tmp_path / "fleet" / "sim-attempts.jsonl").read_text().splitlines()
    ran = Counter((r["job_id"], r["attempt"]) for r in map(json.loads, lines))
    ended = {(r["job_id"], r["attempt"]): r["exit"] for r in map(json.loads, lines)}
    recorded = {(job_id, a["number"]): a for job_id, job in jobs.items() for a in job["attempts"]}
    assert set(ran) == set(recorded)
    assert set(ran.values()) == {1}
    for key, a in recorded.items():
        if a["exit_code"] is not None:
            assert ended[key] == a["exit_code"], (key, a)
