"""Gangs on the real platform: `replicas: N` starts all N ranks together (or none), each with its
rank, the world size and one rendezvous address; a rank that fails stops the others and the gang is
retried as a unit."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import ControlPlane, platform, wait_for, wait_status

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}

# Rank 0 listens on MASTER_ADDR:MASTER_PORT and waits for every other rank to connect and say its
# rank: this only finishes if all ranks run at the same time and agree on the address.
RENDEZVOUS = r"""
import os, socket, sys, time
rank, world = int(os.environ["TRAINYARD_RANK"]), int(os.environ["TRAINYARD_WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
assert os.environ["RANK"] == str(rank) and os.environ["WORLD_SIZE"] == str(world)
fail = os.environ.get("FAIL_RANK")
if fail is not None and int(fail) == rank and os.environ["TRAINYARD_ATTEMPT"] == "1":
    print(f"rank {rank} failing", flush=True)
    sys.exit(3)
if rank == 0:
    srv = socket.create_server((addr, port), reuse_port=True)
    srv.settimeout(60)
    seen = []
    while len(seen) < world - 1:
        conn, _ = srv.accept()
        seen.append(int(conn.recv(16).decode()))
        conn.close()
    print("rank 0 met", sorted(seen), flush=True)
else:
    deadline = time.time() + 60
    while True:
        try:
            with socket.create_connection((addr, port), timeout=2) as s:
                s.sendall(str(rank).encode())
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    print(f"rank {rank} of {world} joined {addr}:{port}", flush=True)
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with platform(tmp_path_factory.mktemp("gangs"), agents=2, agent_args=("--cpus", "2")) as (cp, _):
        yield cp


def gang(c: httpx.Client, replicas: int, cpu: float = 1, **spec: object) -> str:
    body = {
        "command": [sys.executable, "-c", RENDEZVOUS],
        "replicas": replicas,
        "resources": {"cpu": cpu, "memory": "64Mi"},
        **spec,
    }
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_all_ranks_start_together_and_meet(cp: ControlPlane) -> None:
    with cp.client() as c:
        job = gang(c, 3)
        done = wait_status(c, job, DONE, 60)
        assert done["status"] == "SUCCEEDED", done
        assert [r["rank"] for r in done["replicas"]] == [1, 2]
        # A rank still exiting when rank 0 ended is stopped, and ends as the gang did.
        done = wait_for(
            lambda: (
                (v := c.get(f"/v1/jobs/{job}").json())
                and all(r["status"] == "SUCCEEDED" for r in v["replicas"])
                and v
            ),
            15,
        )
        assert "rank 0 met [1, 2]" in c.get(f"/v1/jobs/{job}/logs").text
        for r in done["replicas"]:
            member = c.get(f"/v1/jobs/{r['job_id']}").json()
            assert member["gang_id"] == job and member["rank"] == r["rank"]
            assert f"rank {r['rank']} of 3 joined" in c.get(f"/v1/jobs/{r['job_id']}/logs").text
        # Three ranks of one CPU on two workers of two: they were spread, and listed once.
        workers = {done["worker_id"], *(r["worker_id"] for r in done["replicas"])}
        assert len(workers) == 2, workers
        listed = [j["id"] for j in c.get("/v1/jobs", params={"limit": 100}).json()["jobs"]]
        assert job in listed and not any(r["job_id"] in listed for r in done["replicas"])


def test_a_gang_that_cannot_fit_whole_starts_no_rank(cp: ControlPlane) -> None:
    with cp.client() as c:
        job = gang(c, 3, cpu=2)  # three 2-CPU ranks, two 2-CPU workers: never all at once
        reason = wait_for(lambda: c.get(f"/v1/jobs/{job}").json()["pending_reason"], 15)
        view = c.get(f"/v1/jobs/{job}").json()
        assert view["status"] == "PENDING" and all(r["status"] == "PENDING" for r in view["replicas"]), view
        assert reason, view
        # Meanwhile a small job runs: the waiting gang holds nothing.
        small = c.post(
            "/v1/jobs", json={"command": ["true"], "resources": {"cpu": 1, "memory": "32Mi"}}
        ).json()
        assert wait_status(c, small["id"], DONE, 30)["status"] == "SUCCEEDED"
        assert c.delete(f"/v1/jobs/{job}").status_code == 202
        ended = wait_status(c, job, {"CANCELLED"}, 10)
        assert all(r["status"] == "CANCELLED" for r in ended["replicas"]), ended["replicas"]


def test_a_failed_rank_stops_the_gang_which_retries_as_a_unit(cp: ControlPlane) -> None:
    with cp.client() as c:
        job = gang(c, 3, env={"FAIL_RANK": "2"}, retry={"max_attempts": 2, "on": ["failed"]})
        done = wait_status(c, job, DONE, 90)
        assert done["status"] == "SUCCEEDED" and done["attempt"] == 2, done
        first = done["attempts"][0]
        # Rank 0 was waiting for rank 2 when it failed: stopped, and the gang's attempt failed with it.
        assert first["status"] == "FAILED" and "rank 2" in (first["reason"] or ""), first
        assert "rank 0 met [1, 2]" in c.get(f"/v1/jobs/{job}/logs", params={"attempt": 2}).text
        rank2 = c.get(f"/v1/jobs/{job}-2").json()
        assert [a["exit_code"] for a in rank2["attempts"]] == [3, 0], rank2["attempts"]


# Rank 0 checkpoints its step; every rank waits to be preempted. Run again, every rank reads the
# gang's checkpoint (rank 0's) and finishes.
CHECKPOINTED = r"""
import os, sys, time
import trainyard.job as tj
tj.install_preemption_handler()
rank = int(os.environ["TRAINYARD_RANK"])
found = tj.latest_checkpoint()
if found is not None:
    print(f"rank {rank} resumed at step", tj.load_checkpoint(found).decode(), flush=True)
    sys.exit(0)
if rank == 0:
    tj.save_checkpoint(b"41", step=41)
print(f"rank {rank} running", flush=True)
while not tj.preempted():
    time.sleep(0.05)
if rank == 0:
    tj.save_checkpoint(b"42", step=42)
sys.exit(143)
"""


def test_a_preempted_gang_is_requeued_and_resumes_as_a_unit(cp: ControlPlane) -> None:
    with cp.client() as c:
        body = {
            "command": [sys.executable, "-c", CHECKPOINTED],
            "replicas": 2,
            "resources": {"cpu": 2, "memory": "64Mi"},
            "priority": "low",
            "preemptible": True,
        }
        job = c.post("/v1/jobs", json=body).json()["id"]
        wait_for(lambda: "rank 1 running" in c.get(f"/v1/jobs/{job}-1/logs").text, 30)
        urgent = c.post(
            "/v1/jobs",
            json={"command": ["sleep", "2"], "resources": {"cpu": 2, "memory": "64Mi"}, "priority": "urgent"},
        ).json()["id"]
        assert wait_status(c, urgent, DONE, 60)["status"] == "SUCCEEDED"
        # Rank 1 is stopped as soon as rank 0 reports (not by the stuck-stop backstop, 30 s on).
        done = wait_status(c, job, DONE, 20)
        assert done["status"] == "SUCCEEDED" and done["attempt"] == 2, done
        assert done["attempts"][0]["status"] == "PREEMPTED", done["attempts"]
        assert "preempted" in (done["attempts"][0]["reason"] or ""), done["attempts"]
        rank1 = c.get(f"/v1/jobs/{job}-1").json()
        assert [a["number"] for a in rank1["attempts"]] == [1, 2]
        # Both ranks resumed from rank 0's last checkpoint, written in the preemption grace.
        for jid in (job, f"{job}-1"):
            log = c.get(f"/v1/jobs/{jid}/logs", params={"attempt": 2}).text
            assert "resumed at step 42" in log, (jid, log)
