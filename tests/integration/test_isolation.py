"""Proof that jobs cannot touch each other or the platform, on a real platform with `--isolation required`.

A hostile job tries to read a running neighbour's artifacts, the control plane's database and tokens,
the worker's credentials and work directory, and to signal processes outside its sandbox; each
attempt must fail, and the test names the defence that stopped it. Jobs that exhaust memory or
processes are stopped by their own cgroup (and reported ``oom``) while a neighbour runs undisturbed.

Needs bubblewrap and a writable cgroup tree (root): this file fails, never skips, where they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Agent, ControlPlane, platform, wait_for, wait_status
from trainyard.worker.slots import find_slot, read_owner

PY = sys.executable
DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
PIDS_LIMIT = 64

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, list[Agent]]]:
    if shutil.which("bwrap") is None:
        pytest.fail(
            "bubblewrap (bwrap) is not installed: `make install` installs it (apt-get install bubblewrap)"
        )
    args = ("--isolation", "required", "--cpus", "8", "--memory", "8Gi", "--job-pids-limit", str(PIDS_LIMIT))
    with platform(tmp_path_factory.mktemp("iso"), agents=1, agent_args=args) as p:
        yield p


@pytest.fixture
def c(plat: tuple[ControlPlane, list[Agent]]) -> Iterator[httpx.Client]:
    with plat[0].client() as client:
        yield client


def submit(c: httpx.Client, code: str, cwd: Path, **spec: Any) -> str:
    r = c.post("/v1/jobs", json={"command": [PY, "-c", code], "cwd": str(cwd), **spec})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def logs(c: httpx.Client, job_id: str, attempt: int | None = None) -> str:
    params = {"attempt": attempt} if attempt else {}
    return c.get(f"/v1/jobs/{job_id}/logs", params=params).text


# Each probe prints one JSON line: what it tried, and the errno it got (or "OK" and what it saw).
HOSTILE = r"""
import errno, json, os, signal, sys
targets = json.loads(os.environ["TARGETS"])
dry = os.environ.get("DRY") == "1"
def result(name, fn):
    try:
        got = fn()
        out = {"probe": name, "result": "OK", "saw": str(got)[:80]}
    except OSError as e:
        out = {"probe": name, "result": errno.errorcode.get(e.errno, str(e.errno)), "error": str(e)}
    print(json.dumps(out), flush=True)
def read(path):
    with open(path, "rb") as f:
        return f.read()
result("read neighbour's artifact", lambda: read(targets["artifact"]))
result("list neighbour's artifact dir", lambda: os.listdir(os.path.dirname(targets["artifact"])))
result("read neighbour's artifact via /proc/PID/root", lambda: read(f"/proc/{targets['victim_pid']}/root{targets['artifact']}"))
result("read control plane database", lambda: read(targets["db"]))
result("read control plane admin token", lambda: read(targets["token"]))
result("read worker bootstrap token", lambda: read(targets["worker_token"]))
result("list neighbour's slot in the work dir", lambda: os.listdir(targets["victim_slot"]))
result("read worker's record of the neighbour", lambda: read(targets["victim_slot"] + "/pgid"))
result("read agent environment", lambda: read(f"/proc/{targets['agent_pid']}/environ"))
if not dry:  # the unsandboxed control run only reads
    result("write into a system directory", lambda: open("/usr/trainyard-was-here", "wb").close())
    result("escape own cgroup", lambda: open(targets["cgroup_procs"], "w").write(str(os.getpid())))
    result("signal the agent", lambda: os.kill(targets["agent_pid"], signal.SIGKILL))
    result("signal the neighbour job", lambda: os.kill(targets["victim_pid"], signal.SIGKILL))
    result("signal the neighbour's process group", lambda: os.killpg(targets["victim_pid"], signal.SIGKILL))
"""

PROC_PROBES = {"read agent environment", "read neighbour's artifact via /proc/PID/root"}
DEFENCES = {
    "ENOENT": "hidden: a protected directory is an empty tmpfs in the job's mount namespace",
    "ESRCH": "PID namespace: the process does not exist in the job's world",
    "EROFS": "read-only bind mount of the node's file system",
    "EACCES": "no capabilities",
    "EPERM": "no capabilities",
}


def test_hostile_job_cannot_reach_neighbours_or_the_platform(
    c: httpx.Client, plat: tuple[ControlPlane, list[Agent]], tmp_path: Path
) -> None:
    cp, (agent,) = plat
    victim = submit(
        c,
        "import os, pathlib, time\n"
        "p = pathlib.Path(os.environ['TRAINYARD_ARTIFACT_DIR'], 'secret.txt')\n"
        "p.write_text('the neighbour secret')\n"
        "print('READY', p, flush=True)\n"
        "time.sleep(60)\n",
        tmp_path,
    )
    wait_status(c, victim, {"RUNNING"})
    wait_for(lambda: "\n" in logs(c, victim), 20, 0.05, "the neighbour to write its artifact")
    assert "READY " in logs(c, victim), logs(c, victim)
    artifact = logs(c, victim).split("READY ", 1)[1].split()[0]
    work_dir = cp.home / "workers" / "agent-1"
    slot = find_slot(work_dir, victim, 1)
    assert slot is not None
    owner = read_owner(slot / "pgid")
    assert owner is not None and owner[0] > 1
    own_memory_cgroup = Path("/sys/fs/cgroup/memory/cgroup.procs")
    targets = {
        "artifact": artifact,
        "victim_pid": owner[0],
        "db": str(cp.home / "trainyard.db"),
        "token": str(cp.home / "token"),
        "worker_token": str(cp.home / "worker-token"),
        "victim_slot": str(slot),
        "agent_pid": agent.proc.pid,
        "cgroup_procs": str(own_memory_cgroup),
    }
    # The attacks are real: without the sandbox, the same probes (as the same user) read every target.
    control = subprocess.run(
        [PY, "-c", HOSTILE],
        env={**os.environ, "TARGETS": json.dumps(targets), "DRY": "1"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    unsandboxed = {r["probe"]: r for r in map(json.loads, control.stdout.splitlines())}
    for probe in (
        "read neighbour's artifact",
        "read control plane database",
        "read control plane admin token",
        "read worker bootstrap token",
        "list neighbour's slot in the work dir",
        "read agent environment",
    ):
        assert unsandboxed[probe]["result"] == "OK", (probe, unsandboxed[probe])

    hostile = submit(c, HOSTILE, tmp_path, env={"TARGETS": json.dumps(targets)})
    job = wait_status(c, hostile, DONE, 30)
    assert job["status"] == "SUCCEEDED", (job, logs(c, hostile))
    results = [json.loads(line) for line in logs(c, hostile).splitlines() if line.startswith("{")]
    assert len(results) == 14, logs(c, hostile)
    report = []
    for r in results:
        assert r["result"] != "OK", f"the hostile job succeeded: {r}"
        assert r["result"] in DEFENCES, r
        defence = DEFENCES[r["result"]]
        if r["result"] == "ENOENT" and r["probe"] in PROC_PROBES:
            defence = "PID namespace: the job's own /proc lists only its own processes"
        report.append(f"{r['probe']:<48} {r['result']:<7} stopped by: {defence}")
    print("\n" + "\n".join(report))
    by_probe = {r["probe"]: r["result"] for r in results}
    # Not just "some error": each attack met the defence meant for it.
    for probe in (
        "read neighbour's artifact",
        "read control plane database",
        "read control plane admin token",
        "read worker bootstrap token",
        "list neighbour's slot in the work dir",
    ):
        assert by_probe[probe] == "ENOENT", (probe, by_probe[probe])
    for probe in (
        "signal the agent",
        "signal the neighbour job",
        "signal the neighbour's process group",
        "read agent environment",
        "read neighbour's artifact via /proc/PID/root",
    ):
        assert by_probe[probe] in ("ESRCH", "ENOENT"), (probe, by_probe[probe])
    assert by_probe["write into a system directory"] == "EROFS"
    assert by_probe["escape own cgroup"] in ("EROFS", "ENOENT")

    # Nothing outside was touched: the agent and the neighbour still run, its artifact is intact.
    assert agent.proc.poll() is None
    assert c.get(f"/v1/jobs/{victim}").json()["status"] == "RUNNING"
    assert Path(artifact).read_text() == "the neighbour secret"
    assert not Path("/usr/trainyard-was-here").exists()
    c.delete(f"/v1/jobs/{victim}")
    assert wait_status(c, victim, DONE)["status"] == "CANCELLED"


def test_cwd_inside_the_platform_home_is_refused(
    c: httpx.Client, plat: tuple[ControlPlane, list[Agent]]
) -> None:
    # A job cannot ask to be started inside the directory that holds the database.
    job_id = submit(c, "print(open('trainyard.db','rb').read(16))", plat[0].home, retry={"max_attempts": 1})
    job = wait_status(c, job_id, DONE)
    assert job["status"] == "FAILED" and job["attempts"][0]["outcome"] == "start_failed", job
    assert "protected directory" in job["attempts"][0]["reason"]


MEMORY_HOG = (
    "chunks = []\n"
    "while True:\n"
    "    chunks.append(b'x' * (8 << 20))\n"
    "    print('allocated', 8 * len(chunks), 'MiB', flush=True)\n"
)

FORK_BOMB = (
    "import os, sys, time\n"
    "n = 0\n"
    "try:\n"
    "    while True:\n"
    "        if os.fork() == 0:\n"
    "            time.sleep(60)\n"
    "            os._exit(0)\n"
    "        n += 1\n"
    "except OSError as e:\n"
    "    print(f'fork failed after {n} children: {e}', flush=True)\n"
    "    sys.exit(3)\n"
)

NEIGHBOUR = (
    "import subprocess, time\n"
    "keep = b'n' * (64 << 20)\n"  # a working set of its own that must survive the others' OOM
    "for i in range(12):\n"
    "    subprocess.run(['true'], check=True)\n"  # it can still start processes while the bomb runs
    "    print('tick', i, flush=True)\n"
    "    time.sleep(0.25)\n"
    "assert keep[-1:] == b'n'\n"
    "print('neighbour done', flush=True)\n"
)


def test_memory_and_fork_bombs_hit_their_own_limits_only(c: httpx.Client, tmp_path: Path) -> None:
    neighbour = submit(c, NEIGHBOUR, tmp_path, resources={"memory": "256Mi", "cpu": 1})
    wait_for(lambda: "tick 0" in logs(c, neighbour), 20, 0.05, "the neighbour to start")
    hog = submit(
        c,
        MEMORY_HOG,
        tmp_path,
        resources={"memory": "96Mi", "cpu": 1},
        retry={"max_attempts": 2, "on": ["oom"]},
    )
    bomb = submit(c, FORK_BOMB, tmp_path, resources={"memory": "256Mi", "cpu": 1}, retry={"max_attempts": 1})

    job = wait_status(c, hog, DONE, 60)
    assert job["status"] == "FAILED", job
    # Both attempts were OOM-killed and reported so; the retry rule `on: [oom]` matched the first.
    assert len(job["attempts"]) == 2, job["attempts"]
    for a in job["attempts"]:
        assert a["reason"].startswith("oom"), a
        assert a["exit_code"] == 137, a
    assert "96Mi" in job["attempts"][0]["reason"]
    allocated = [
        int(line.split()[1]) for line in logs(c, hog, 1).splitlines() if line.startswith("allocated")
    ]
    assert allocated and max(allocated) < 96, allocated  # killed at its limit, not the node's

    job = wait_status(c, bomb, DONE, 60)
    assert job["status"] == "FAILED" and job["exit_code"] == 3, (job, logs(c, bomb))
    out = logs(c, bomb)
    assert "fork failed after" in out and "Resource temporarily unavailable" in out, out
    forked = int(out.split("fork failed after ")[1].split()[0])
    assert 0 < forked < PIDS_LIMIT, forked

    job = wait_status(c, neighbour, DONE, 60)
    assert job["status"] == "SUCCEEDED", (job, logs(c, neighbour))
    assert "neighbour done" in logs(c, neighbour)
