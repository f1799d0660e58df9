"""End to end: `yard up` in a temp home on free ports, driven only through the `yard` CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO, free_port, wait_for

YARD = [sys.executable, "-m", "trainyard"]


class Yard:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "TRAINYARD_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.env.pop("TRAINYARD_URL", None)
        self.env.pop("TRAINYARD_TOKEN", None)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*YARD, *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"yard {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}"
            )
        return proc

    def job(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("get", job_id, "-o", "json").stdout)
        return data

    def wait(self, job_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        result: dict[str, Any] = wait_for(
            lambda: (j := self.job(job_id))["status"] in statuses and j,
            timeout,
            0.2,
            f"{job_id} in {statuses}",
        )
        return result


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Yard, subprocess.Popen[str]]]:
    home = tmp_path_factory.mktemp("e2e") / "home"
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *YARD,
            "up",
            "--home",
            str(home),
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--workers",
            "2",
            "--heartbeat-interval",
            "0.3",
            "--cancel-grace",
            "2",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    banner = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner.append(line)
        if line.startswith("Press Ctrl-C"):
            break
    text = "".join(banner)
    assert "Trainyard is up." in text and f"127.0.0.1:{port}" in text and "yard submit" in text, text
    assert (home / "token").stat().st_mode & 0o777 == 0o600
    yard = Yard(home)
    wait_for(
        lambda: len(json.loads(yard.run("workers", "-o", "json").stdout)["workers"]) == 2, 30, 0.2, "workers"
    )
    yield yard, proc
    if proc.poll() is None:
        # Ctrl-C, as a user stops it: `yard up` stops its agents. SIGKILL only if that hangs, and
        # then its agents (processes of their own) are reaped here, not left running.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in _agent_pids(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_tiny_training_job_logs_artifacts(up: tuple[Yard, subprocess.Popen[str]], tmp_path: Path) -> None:
    yard, _ = up
    job_id = yard.run(
        "submit",
        "--cpu",
        "1",
        "--memory",
        "512Mi",
        "--name",
        "tiny",
        "--",
        sys.executable,
        "examples/train_tiny.py",
        "--epochs",
        "5",
        "--sleep",
        "0.2",
    ).stdout.strip()
    assert job_id.startswith("j") and "\n" not in job_id
    follow = yard.run("logs", "-f", job_id, timeout=90)
    assert follow.returncode == 0
    for epoch in range(1, 6):
        assert f"epoch {epoch}/5" in follow.stdout
    job = yard.job(job_id)
    assert job["status"] == "SUCCEEDED" and job["attempts"][0]["exit_code"] == 0
    assert "epoch 5/5" in yard.run("logs", job_id, "--tail", "3").stdout
    listing = yard.run("artifacts", job_id).stdout
    assert "model.npz" in listing and "metrics.json" in listing
    dest = tmp_path / "dl"
    out = yard.run("artifacts", job_id, "--download", str(dest)).stdout
    assert (dest / "model.npz").stat().st_size > 0 and "verified" in out
    assert job_id in yard.run("ls").stdout
    human = yard.run("get", job_id).stdout
    assert "SUCCEEDED" in human


def test_workdir_upload_and_job_yaml(up: tuple[Yard, subprocess.Popen[str]], tmp_path: Path) -> None:
    yard, _ = up
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "big").write_bytes(b"x" * 1000)
    (project / "main.py").write_text("import os\nprint('in bundle:', sorted(os.listdir('.')))\n")
    job_id = yard.run("submit", "--workdir", str(project), "--", sys.executable, "main.py").stdout.strip()
    follow = yard.run("logs", "-f", job_id, timeout=60)
    assert "in bundle: ['main.py']" in follow.stdout  # .git was left out
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: from-yaml\n"
        f"command: [{sys.executable!r}, '-c', 'print(42)']\n"
        "resources: {cpu: 0.5, memory: 256Mi}\n"
        "retry: {max_attempts: 2, backoff: 1s, on: [infra, 'exit:137']}\n"
    )
    job_id = yard.run("submit", "-f", str(spec)).stdout.strip()
    assert yard.run("logs", "-f", job_id, timeout=60).stdout.strip() == "42"
    assert yard.job(job_id)["name"] == "from-yaml"


def test_failed_job_exit_code_flows_to_logs_f(up: tuple[Yard, subprocess.Popen[str]]) -> None:
    yard, _ = up
    job_id = yard.run(
        "submit", "--", sys.executable, "-c", "import sys; print('bye'); sys.exit(7)"
    ).stdout.strip()
    follow = yard.run("logs", "-f", job_id, check=False, timeout=60)
    assert follow.returncode == 7 and "bye" in follow.stdout


def test_cancel_stops_a_running_sleep(up: tuple[Yard, subprocess.Popen[str]]) -> None:
    yard, _ = up
    job_id = yard.run("submit", "--", "sleep", "300").stdout.strip()
    yard.wait(job_id, {"RUNNING"})
    yard.run("cancel", job_id)
    job = yard.wait(job_id, {"CANCELLED"}, 15)
    assert job["status"] == "CANCELLED"


def test_bad_spec_is_refused_clearly(up: tuple[Yard, subprocess.Popen[str]]) -> None:
    yard, _ = up
    bad = yard.run("submit", "--memory", "lots", "--", "true", check=False)
    assert bad.returncode != 0 and "memory" in bad.stderr


def test_kill_9_agent_reruns_job_on_the_other(up: tuple[Yard, subprocess.Popen[str]]) -> None:
    yard, _ = up
    job_id = yard.run(
        "submit",
        "--retries",
        "2",
        "--",
        sys.executable,
        "-c",
        "import time; print('working', flush=True); time.sleep(10); print('finished')",
    ).stdout.strip()
    job = yard.wait(job_id, {"RUNNING"})
    worker_id = job["attempts"][0]["worker_id"]
    workers = json.loads(yard.run("workers", "-o", "json").stdout)["workers"]
    name = next(w["name"] for w in workers if w["id"] == worker_id)
    pid = _agent_pid(yard.home, name)
    os.kill(pid, signal.SIGKILL)
    job = yard.wait(job_id, {"SUCCEEDED", "FAILED"}, 60)
    assert job["status"] == "SUCCEEDED", job
    assert len(job["attempts"]) == 2 and job["attempts"][0]["status"] == "LOST"
    assert job["attempts"][1]["worker_id"] != worker_id
    shown = yard.run("get", job_id).stdout
    assert "LOST" in shown and "SUCCEEDED" in shown


def test_secrets_tokens_and_audit_from_the_cli(up: tuple[Yard, subprocess.Popen[str]]) -> None:
    yard, _ = up
    value = "cli-secret-value-42"
    proc = subprocess.run(
        [*YARD, "secret", "set", "CLI_KEY"],
        input=value + "\n",
        env=yard.env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(yard.run("secret", "ls", "-o", "json").stdout)["secrets"]
    assert [s["name"] for s in listed] == ["CLI_KEY"] and value not in json.dumps(listed)
    job_id = yard.run(
        "submit",
        "--secret",
        "CLI_KEY",
        "--",
        sys.executable,
        "-c",
        "import os; print(os.environ['CLI_KEY'] == 'cli-secret-value-42', os.environ['CLI_KEY'])",
    ).stdout.strip()
    assert yard.run("logs", "-f", job_id).stdout.strip() == "True ***"
    created = yard.run("admin", "token", "create", "--expires", "1h", "--description", "e2e")
    token, token_id = created.stdout.strip(), created.stderr.split()[0]
    tokens = json.loads(yard.run("admin", "token", "list", "-o", "json").stdout)["tokens"]
    assert any(t["id"] == token_id and t["state"] == "active" for t in tokens), tokens
    as_new = {**yard.env, "TRAINYARD_TOKEN": token}
    ok = subprocess.run([*YARD, "ls"], env=as_new, cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "revoked" in yard.run("admin", "token", "revoke", token_id).stdout
    refused = subprocess.run([*YARD, "ls"], env=as_new, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode != 0 and "not valid" in refused.stderr + refused.stdout
    trail = json.loads(yard.run("admin", "audit", "-o", "json").stdout)["entries"]
    assert {"secret.set", "token.create", "token.revoke"} <= {e["action"] for e in trail}
    yard.run("secret", "rm", "CLI_KEY")


def test_the_pipeline_example_trains_a_sweep_then_evaluates_every_model(
    up: tuple[Yard, subprocess.Popen[str]], tmp_path: Path
) -> None:
    # examples/pipeline.sh as a user runs it, with `yard` on PATH: an array, then a job --after-ok it.
    yard, _ = up
    shim = tmp_path / "bin" / "yard"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m trainyard "$@"\n')
    shim.chmod(0o755)
    env = {**yard.env, "PATH": f"{shim.parent}:{os.environ['PATH']}", "PYTHON": sys.executable}
    run = subprocess.run(
        ["sh", "examples/pipeline.sh"], env=env, cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr + run.stdout
    sweep = run.stdout.split()[1].rstrip(",")
    assert "Depends on" in run.stdout and f"{sweep} (succeeded)" in run.stdout
    for i in range(4):
        assert f"{sweep}-{i}: accuracy=" in run.stdout, run.stdout
    assert f"best: {sweep}-" in run.stdout
    assert "BEST LOSS" in run.stdout and yard.job(sweep)["array"]["counts"] == {"SUCCEEDED": 4}


def test_ctrl_c_stops_everything(up: tuple[Yard, subprocess.Popen[str]]) -> None:
    from trainyard.store.sql import SqlStore

    yard, proc = up
    job_id = yard.run("submit", "--", "sleep", "300").stdout.strip()
    yard.wait(job_id, {"RUNNING"})
    assert _agent_pids(yard.home)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    wait_for(lambda: not _agent_pids(yard.home), 10, 0.1, "agents to exit")
    # Workers stopped first and reported: the running job went back to the queue without using a
    # retry, and is there for the next `yard up`.
    store = SqlStore(f"sqlite:///{yard.home / 'trainyard.db'}")
    try:
        job = store.get_job(job_id)
        assert job is not None and job.status.value == "PENDING" and job.tries == 0
        assert [a.status for a in job.attempts] == ["PREEMPTED"]
    finally:
        store.close()


def _agent_pids(home: Path) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in cmd and str(home).encode() in cmd:
            pids.append(int(p.name))
    return pids


def _agent_pid(home: Path, name: str) -> int:
    for pid in _agent_pids(home):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if name.encode() in cmd:
            return pid
    raise AssertionError(f"no agent process named {name}")
