"""Preemption end to end: spot notices, drains and agent shutdowns all checkpoint, requeue without
using a retry, and resume; a preempted training run ends with the same model as an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import REPO, YARD, Agent, ControlPlane, wait_for, wait_status

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
AGENT_ENV = {"TRAINYARD_PREEMPT_GRACE": "10"}

# Counts until told to stop, then checkpoints its count; a resumed run says where it resumed.
COUNTER = """
import sys, time
import trainyard.job as tj
tj.install_preemption_handler()
ckpt = tj.latest_checkpoint()
if ckpt is not None:
    print("resumed at", int(tj.load_checkpoint(ckpt)), flush=True)
    sys.exit(0)
i = 0
print("counting", flush=True)
while not tj.preempted():
    i += 1
    time.sleep(0.05)
tj.save_checkpoint(str(i).encode(), step=i)
print("checkpointed", i, flush=True)
sys.exit(143)
"""


class Metadata:
    """Plays a cloud's instance metadata service: no interruption notice until ``post()``."""

    def __init__(self, style: str) -> None:
        self.style = style
        self.noticed = threading.Event()
        self.reads = 0
        meta = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: bytes = b"") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:  # AWS IMDSv2 session token
                if self.path == "/latest/api/token" and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    self._send(200, b"imds-token")
                else:
                    self._send(404)

            def do_GET(self) -> None:
                meta.reads += 1
                if meta.style == "aws" and self.path == "/latest/meta-data/spot/instance-action":
                    if self.headers.get("X-aws-ec2-metadata-token") != "imds-token":
                        self._send(401)
                    elif meta.noticed.is_set():
                        self._send(
                            200, json.dumps({"action": "terminate", "time": "2030-01-01T00:02:00Z"}).encode()
                        )
                    else:
                        self._send(404)
                elif meta.style == "gcp" and self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        self._send(403)
                    else:
                        self._send(200, b"TRUE" if meta.noticed.is_set() else b"FALSE")
                else:
                    self._send(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        if self.style == "aws":
            return f"http://127.0.0.1:{port}/latest/meta-data/spot/instance-action"
        return f"http://127.0.0.1:{port}/computeMetadata/v1/instance/preempted"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "home").start()
    yield plane
    plane.stop()


def _worker(c: httpx.Client, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(w for w in c.get("/v1/workers").json()["workers"] if w["name"] == name)
    return found


def _log(c: httpx.Client, job_id: str, attempt: int) -> str:
    return c.get(f"/v1/jobs/{job_id}/logs", params={"attempt": attempt}).text


@pytest.mark.parametrize("style", ["aws", "gcp"])
def test_spot_notice_checkpoints_and_requeues_before_the_sigterm(cp: ControlPlane, style: str) -> None:
    meta = Metadata(style)
    spot = Agent(
        cp,
        "spot-1",
        extra_env={**AGENT_ENV, "TRAINYARD_SPOT_NOTICE_URL": meta.url, "TRAINYARD_SPOT_POLL": "0.1"},
    )
    spare: Agent | None = None
    try:
        with cp.client() as c:
            wait_for(
                lambda: (
                    _worker(c, "spot-1")["status"] == "ALIVE"
                    if c.get("/v1/workers").json()["workers"]
                    else False
                ),
                30,
            )
            spec = {
                "command": [sys.executable, "-c", COUNTER],
                "retry": {"max_attempts": 1},
                "preemptible": True,
            }
            job_id = c.post("/v1/jobs", json=spec).json()["id"]
            wait_status(c, job_id, {"RUNNING"}, 30)
            wait_for(lambda: "counting" in _log(c, job_id, 1), 10, 0.1, "the job to start counting")
            wait_for(lambda: meta.reads >= 3, 10, 0.05, "the agent to poll the metadata service")
            meta.noticed.set()
            noticed_at = time.monotonic()
            # The agent acts on the notice alone (it is never sent SIGTERM): checkpoint, report, requeue.
            job = wait_status(c, job_id, {"PENDING"}, 20)
            reacted_s = time.monotonic() - noticed_at
            first = job["attempts"][0]
            assert first["outcome"] == "preempted", first
            assert ("AWS spot interruption notice" if style == "aws" else "GCP preemption notice") in first[
                "reason"
            ]
            assert "checkpointed" in _log(c, job_id, 1)
            # It told the control plane it drains: nothing new is placed there.
            wait_for(
                lambda: _worker(c, "spot-1")["status"] == "DRAINING", 10, 0.1, "the worker to be DRAINING"
            )
            assert spot.proc.poll() is None, "the agent keeps running until the SIGTERM comes"
            spare = Agent(cp, "spare-1", extra_env=AGENT_ENV)
            job = wait_status(c, job_id, DONE, 30)
            assert job["status"] == "SUCCEEDED", job
            # The retry budget of one was not touched, and the resume got the uploaded checkpoint.
            assert [a["outcome"] for a in job["attempts"]] == ["preempted", "succeeded"]
            assert job["attempts"][1]["worker_id"] == _worker(c, "spare-1")["id"]
            resumed = _log(c, job_id, 2)
            counted = int(_log(c, job_id, 1).split("checkpointed")[1].split()[0])
            assert resumed.strip() == f"resumed at {counted}" and counted > 0
            print(f"{style}: notice to requeued in {reacted_s:.2f}s")
    finally:
        meta.close()
        spot.stop()
        if spare is not None:
            spare.stop()


def _standalone_model(tmp: Path, args: list[str]) -> bytes:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env["TRAINYARD_CHECKPOINT_DIR"] = str(tmp / "ckpt")
    env["TRAINYARD_ARTIFACT_DIR"] = str(tmp / "art")
    tmp.mkdir(parents=True)
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "train_tiny.py"), *args],
        env=env,
        cwd=tmp,
        check=True,
        timeout=60,
    )
    return (tmp / "art" / "model.npz").read_bytes()


def _epochs_done(c: httpx.Client, job_id: str, attempt: int) -> int:
    lines = [ln for ln in _log(c, job_id, attempt).splitlines() if ln.startswith("epoch ")]
    return int(lines[-1].split()[1].split("/")[0]) if lines else 0


def test_train_tiny_preempted_twice_ends_with_the_uninterrupted_model(
    cp: ControlPlane, tmp_path: Path
) -> None:
    args = ["--epochs", "40", "--seed", "7", "--samples", "400", "--sleep", "0.25"]
    reference = _standalone_model(tmp_path / "alone", [a if a != "0.25" else "0" for a in args])
    first = Agent(cp, "agent-1", extra_env=AGENT_ENV)
    agents = [first]
    try:
        with cp.client() as c:
            wait_for(lambda: any(w["status"] == "ALIVE" for w in c.get("/v1/workers").json()["workers"]), 30)
            spec = {
                "command": [sys.executable, str(REPO / "examples" / "train_tiny.py"), *args],
                "retry": {"max_attempts": 1},
                "preemptible": True,
            }
            job_id = c.post("/v1/jobs", json=spec).json()["id"]
            wait_for(lambda: _epochs_done(c, job_id, 1) >= 2, 60, 0.1, "two epochs on agent-1")
            # Preemption 1: an admin drains the worker; jobs may go on for the deadline, then are preempted.
            drained_at = time.time()
            out = subprocess.run(
                [
                    *YARD,
                    "--url",
                    cp.url,
                    "--token",
                    cp.token,
                    "admin",
                    "drain",
                    "agent-1",
                    "--deadline",
                    "1s",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 0 and "draining" in out.stdout, out.stderr
            job = wait_status(c, job_id, {"PENDING"}, 90)
            assert job["attempts"][0]["outcome"] == "preempted" and "drained" in job["attempts"][0]["reason"]
            assert job["attempts"][0]["finished_at"] is not None
            assert _worker(c, "agent-1")["status"] == "DRAINING"
            assert time.time() - drained_at >= 1.0
            # Preemption 2: the node running it goes away (its agent gets SIGTERM, as on a spot reclaim).
            agents.append(Agent(cp, "agent-2", extra_env=AGENT_ENV))
            wait_for(lambda: "resumed from epoch" in _log(c, job_id, 2), 30, 0.1, "attempt 2 to resume")
            resumed_at = _epochs_done(c, job_id, 1)
            wait_for(lambda: _epochs_done(c, job_id, 2) >= resumed_at + 2, 30, 0.1, "progress on agent-2")
            agents[1].stop()
            job = wait_status(c, job_id, {"PENDING"}, 90)
            assert job["attempts"][1]["outcome"] == "preempted"
            # agent-1 comes back (a restarted agent registers afresh: no longer draining) and finishes.
            first.stop()
            agents.append(Agent(cp, "agent-1", extra_env=AGENT_ENV))
            job = wait_status(c, job_id, DONE, 60)
            assert job["status"] == "SUCCEEDED", job
            assert [a["outcome"] for a in job["attempts"]] == ["preempted", "preempted", "succeeded"]
            assert "resumed from epoch" in _log(c, job_id, 3)
            model = c.get(f"/v1/jobs/{job_id}/artifacts/model.npz", follow_redirects=True)
            assert model.status_code == 200
            assert model.content == reference, "the preempted run's model differs from the uninterrupted one"
    finally:
        for a in agents:
            a.stop()
