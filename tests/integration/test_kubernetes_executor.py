"""The kubernetes executor's Pods, run for real with `podman kube play`, against the process executor.

No cluster runs here, so no kubelet runs these Pods; Podman's `kube play` does, from the very
manifests the executor sends to the API (`plan_pod`). For a representative set of attempts, the
same LaunchSpec runs once through the process executor and once as a Pod, and the job's command,
environment, working directory, volumes and exit code must come out the same: the job sees the
same TRAINYARD_* paths, and what it writes lands where the agent collects it.

What Podman does not do as a kubelet would, and is therefore not checked here: GPUs (`nvidia.com/gpu`
is ignored; this machine has none), `activeDeadlineSeconds`, `nodeName`, the Pod network (run with
`--network none`: no network configuration exists here) and the API's view of the Pod (the
recorded-API tests in tests/unit/worker/test_kubernetes_api.py cover that).

Podman runs with its storage, state and configuration in a temporary directory (as in
test_docker_executor.py), and since no registry is reachable the image is built locally: the host's
dash, sleep, cat, env and id with the shared libraries they load, imported with `podman import`;
the same image is the Pods' infra container (`/pause`, a shell loop) through a containers.conf of the
test's own. Without podman the tests fail rather than skip (`make podman` installs it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.worker.helpers import launch_spec
from trainyard.worker.executors.base import ExitStatus, LaunchSpec
from trainyard.worker.executors.kubernetes import (
    KubernetesSettings,
    PodView,
    exit_status,
    plan_pod,
    plan_secret,
)
from trainyard.worker.executors.process import ProcessExecutor
from trainyard.worker.spool import LogSpool

pytestmark = pytest.mark.timeout(180)

IMAGE = "localhost/trainyard-k8s-test:1"
PAUSE = b"#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n"
TOOLS = ("/bin/sh", "/bin/sleep", "/bin/cat", "/usr/bin/env", "/usr/bin/id")
NOBODY = (65534, 65534)

# What the job reports, in both executors: where it runs, who it is, its whole environment, what it
# reads from its volumes; then it writes into them, and exits with $JOB_EXIT.
SCRIPT = r"""
echo "pwd=$(pwd)"
echo "uid=$(id -u)"
env | while IFS= read -r line; do echo "env:$line"; done
if [ -n "$TRAINYARD_RESUME_FROM" ]; then echo "resume=$(cat "$TRAINYARD_RESUME_FROM/state")"; fi
if [ -n "$TRAINYARD_DATA_CACHE" ] && [ -f "$TRAINYARD_DATA_CACHE/dataset.txt" ]; then
  echo "dataset=$(cat "$TRAINYARD_DATA_CACHE/dataset.txt")"
fi
if [ -f input.txt ]; then echo "input=$(cat input.txt)"; fi
echo "weights $TRAINYARD_JOB_ID" > "$TRAINYARD_CHECKPOINT_DIR/step-1.pt"
echo '{"acc": 1}' > "$TRAINYARD_ARTIFACT_DIR/metrics.json"
if [ -n "$WRITE_CWD" ]; then echo scratch > scratch.txt; fi
echo "to stderr" >&2
exit "$JOB_EXIT"
"""


def _rootfs_tar() -> bytes:
    files: dict[str, str] = {}
    for tool in TOOLS:
        real = os.path.realpath(tool)
        files[tool] = real
        out = subprocess.run(["ldd", real], capture_output=True, text=True, check=True).stdout
        for word in out.split():
            if word.startswith("/") and os.path.exists(word):
                files[word] = os.path.realpath(word)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs = {"tmp", "proc", "sys", "dev", "etc"}
        for path in files:
            parent = Path(path.lstrip("/")).parent
            while str(parent) != ".":
                dirs.add(str(parent))
                parent = parent.parent
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for path, real in sorted(files.items()):
            data = Path(real).read_bytes()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("pause")
        info.size, info.mode = len(PAUSE), 0o755
        tar.addfile(info, io.BytesIO(PAUSE))
    return buf.getvalue()


def _unmount_under(root: Path) -> None:
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(str(root))]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@dataclasses.dataclass(frozen=True)
class KubePlay:
    exe: str
    flags: tuple[str, ...]
    env: dict[str, str]
    top: Path
    inspected: dict[str, Any] = dataclasses.field(default_factory=dict)

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.exe, *self.flags, *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=check,
            timeout=60,
        )

    def play(self, pod: dict[str, Any]) -> tuple[int, str, str]:
        """Run the Pod to its end: its container's exit code, stdout and stderr (``inspected`` keeps
        what Podman says of the container)."""
        name = pod["metadata"]["name"]
        manifest = self.top / f"{name}.json"
        # JSON, as the executor sends it to the API (JSON is YAML): PyYAML would write 3e-4 plain,
        # which is a string to it and a number to Podman's YAML parser.
        manifest.write_text(json.dumps(pod))
        try:
            played = self.podman("kube", "play", "--network", "none", str(manifest), check=False)
            assert played.returncode == 0, played.stderr
            container = f"{name}-job"
            code = int(self.podman("wait", container).stdout.strip())
            logs = self.podman("logs", container)
            self.inspected[name] = json.loads(self.podman("inspect", container).stdout)[0]
            return code, logs.stdout, logs.stderr
        finally:
            self.podman("pod", "rm", "--force", name, check=False)


@pytest.fixture(scope="module")
def kube() -> Iterator[KubePlay]:
    exe = shutil.which("podman")
    if exe is None:
        pytest.fail("podman is not installed (Debian: `make podman` installs podman and runc)")
    top = Path(tempfile.mkdtemp(prefix="ty-kube-", dir="/tmp"))
    flags = (
        f"--root={top / 'root'}",
        f"--runroot={top / 'run'}",
        f"--tmpdir={top / 'tmp'}",
        f"--network-config-dir={top / 'net'}",
        f"--volumepath={top / 'volumes'}",
        "--storage-driver=vfs",
        "--cgroup-manager=cgroupfs",
        "--events-backend=file",
        "--runtime=runc",
    )
    (top / "tmp").mkdir()
    conf = top / "containers.conf"
    # The infra container of each Pod is the test image (no pause image can be pulled, and Debian's
    # podman builds its own only where catatonit is installed); Podman's default ulimits are above
    # this machine's hard limits.
    conf.write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
        "[engine]\n"
        f'infra_image = "{IMAGE}"\n'
        'infra_command = "/pause"\n'
    )
    env = {**os.environ, "TMPDIR": str(top / "tmp"), "CONTAINERS_CONF": str(conf)}
    kp = KubePlay(exe, flags, env, top)
    try:
        tarball = top / "rootfs.tar"
        tarball.write_bytes(_rootfs_tar())
        kp.podman("import", "--quiet", "--change", 'CMD ["/pause"]', str(tarball), IMAGE)
        yield kp
    finally:
        kp.podman("pod", "rm", "--all", "--force", check=False)
        kp.podman("rm", "--all", "--force", check=False)
        _unmount_under(top)
        shutil.rmtree(top, ignore_errors=True)


# ---- the representative attempts -----------------------------------------------------------------------


def _own(*dirs: Path) -> None:
    """As the agent does for a job's user (attempt.py's _own_dirs)."""
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, *NOBODY)


def _attempt(tmp_path: Path, case: str) -> LaunchSpec:
    env = {
        "TRAINYARD_TEAM": "vision",
        "TRAINYARD_JOB_NAME": "resnet sweep",
        "WANDB_API_KEY": "not-a-real-secret",
        "LR": "3e-4",
        "JOB_EXIT": "0",
    }
    spec = launch_spec(tmp_path, ["/bin/sh", "job.sh"], env=env, job_id=f"j-{case}")
    # The job's script, in its bundle (the attempt's work directory), as `sh train.sh` would be.
    script = spec.attempt_dir / "work" / "job.sh"
    script.write_text(SCRIPT)
    spec = dataclasses.replace(
        spec,
        command=("/bin/sh", str(script)),
        image=IMAGE,
        user=NOBODY,
        lease_token=f"lease-{case}",
        memory=256 << 20,
        cpu=1.0,
    )
    _own(spec.checkpoint_dir, spec.artifact_dir, spec.cwd)
    if case == "bundle":
        # A job run from its bundle (cwd: the attempt's work directory) that fails with its own code.
        return dataclasses.replace(spec, env={**spec.env, "JOB_EXIT": "7", "WRITE_CWD": "1"})
    if case == "resumed":
        # An attempt resumed from a checkpoint, with its team's data cache, that succeeds.
        resume = spec.attempt_dir / "resume"
        resume.mkdir()
        (resume / "state").write_text("epoch=4")
        cache = tmp_path / "data-cache" / "vision"
        _own(cache)
        (cache / "dataset.txt").write_text("imagenet-shard-0")
        env2 = {**spec.env, "TRAINYARD_DATA_CACHE": str(cache), "WRITE_CWD": "1"}
        return dataclasses.replace(spec, resume_dir=resume, data_cache=cache, env=env2)
    if case == "shared-cwd":
        # A job submitted from a directory the worker shares (--allow-cwd): it reads its input there.
        shared = tmp_path / "shared" / "project"
        shared.mkdir(parents=True)
        (shared / "input.txt").write_text("hello")
        return dataclasses.replace(spec, cwd=shared, env={**spec.env, "JOB_EXIT": "3"})
    raise AssertionError(case)


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: ExitStatus
    lines: list[str]
    env: dict[str, str]
    stderr: str
    files: dict[str, str]


def _outcome(status: ExitStatus, stdout: str, stderr: str, spec: LaunchSpec) -> Outcome:
    lines = [line for line in stdout.splitlines() if not line.startswith("env:")]
    env = dict(line[4:].split("=", 1) for line in stdout.splitlines() if line.startswith("env:"))
    files = {}
    for d in (spec.checkpoint_dir, spec.artifact_dir, spec.cwd):
        for f in sorted(d.iterdir()):
            if f.is_file() and f.name not in ("input.txt", "job.sh"):
                files[str(f)] = f.read_text()
                f.unlink()  # the next run starts from the same state
    return Outcome(status, lines, env, stderr, files)


def _run_process(spec: LaunchSpec) -> Outcome:
    async def main() -> tuple[ExitStatus, bytes, bytes]:
        out = LogSpool(spec.attempt_dir / "process-out", 1 << 20)

        class Split:
            def __init__(self) -> None:
                self.err = b""

            def write(self, stream: int, data: bytes) -> None:
                if stream == 2:
                    self.err += data
                else:
                    out.write(stream, data)

        sink = Split()
        handle = await ProcessExecutor().start(spec, sink)
        status = await asyncio.wait_for(handle.wait(), 30)
        return status, out.read(0, out.size), sink.err

    status, stdout, stderr = asyncio.run(main())
    return _outcome(status, stdout.decode(), stderr.decode(), spec)


def _as_the_kubelet_resolves(
    pod: dict[str, Any], secret: dict[str, Any] | None, claims: dict[str, Path]
) -> None:
    """What Podman has no objects for, done as a kubelet does it: a claim of a `local` volume is
    bind-mounted from the volume's node path joined with the mount's subPath (so each becomes the
    hostPath of exactly that directory), and a secretKeyRef becomes the Secret's value."""
    spec = pod["spec"]
    container = spec["containers"][0]
    by_name = {v["name"]: v for v in spec["volumes"]}
    volumes = [v for v in spec["volumes"] if "persistentVolumeClaim" not in v]
    for i, m in enumerate(container["volumeMounts"]):
        claim = by_name[m["name"]].get("persistentVolumeClaim")
        if claim is None:
            continue
        path = claims[claim["claimName"]] / m.pop("subPath")
        m["name"] = f"claimed-{i}"
        volumes.append({"name": m["name"], "hostPath": {"path": str(path), "type": "Directory"}})
    spec["volumes"] = volumes
    values = (secret or {}).get("stringData", {})
    for e in container["env"]:
        ref = e.pop("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert secret is not None and ref["name"] == secret["metadata"]["name"]
            e["value"] = values[ref["key"]]


def _run_pod(
    kube: KubePlay, spec: LaunchSpec, tmp_path: Path, *, claims: bool = False
) -> tuple[Outcome, dict[str, Any]]:
    settings = KubernetesSettings(node_name="node-1", worker="node-1-test", host_roots=(tmp_path,))
    named = {"trainyard-work": tmp_path / "jobs", "trainyard-data": tmp_path / "data-cache"}
    if claims:
        settings = dataclasses.replace(settings, volume_claims=tuple((p, c) for c, p in named.items()))
    pod = plan_pod(spec, settings)
    secret = plan_secret(spec, settings)
    assert claims == (secret is not None) == any("persistentVolumeClaim" in v for v in pod["spec"]["volumes"])
    _as_the_kubelet_resolves(pod, secret, named)
    code, stdout, stderr = kube.play(pod)
    # The container's end, read as the executor reads it from the API.
    view = PodView.of(
        {
            "status": {
                "phase": "Failed",
                "containerStatuses": [{"name": "job", "state": {"terminated": {"exitCode": code}}}],
            }
        }
    )
    return _outcome(exit_status(view, memory=spec.memory, killed=False), stdout, stderr, spec), pod


@pytest.mark.parametrize("case", ["bundle", "resumed", "shared-cwd", "resumed-with-claims"])
def test_a_pod_runs_the_job_as_the_process_executor_does(kube: KubePlay, tmp_path: Path, case: str) -> None:
    """``-with-claims``: as pool `pods` runs it, the directories from claims of local volumes (each a
    subPath) and the team secret from the attempt's Secret, resolved as a kubelet would."""
    claims = case.endswith("-with-claims")
    spec = _attempt(tmp_path, case.removesuffix("-with-claims"))
    if claims:
        spec = dataclasses.replace(spec, secret_env=("WANDB_API_KEY",))
    process = _run_process(spec)
    pod_run, pod = _run_pod(kube, spec, tmp_path, claims=claims)

    # Exit code.
    expected_exit = int(spec.env["JOB_EXIT"])
    assert process.status == pod_run.status == ExitStatus(returncode=expected_exit)

    # Command and working directory, and what it read from its volumes (resume, data cache, cwd).
    assert f"pwd={spec.cwd}" in pod_run.lines
    assert [line for line in process.lines if not line.startswith("uid=")] == [
        line for line in pod_run.lines if not line.startswith("uid=")
    ]
    assert "uid=65534" in pod_run.lines  # the job's user (the process executor here runs as the agent)
    assert process.stderr == pod_run.stderr == "to stderr\n"

    # The environment contract: every variable the process executor gives the job from its spec and
    # TRAINYARD_*, with the same values; the agent's own environment stays out of the Pod.
    contract = {k: v for k, v in process.env.items() if k in spec.env or k.startswith("TRAINYARD_")}
    contract["CUDA_VISIBLE_DEVICES"] = process.env["CUDA_VISIBLE_DEVICES"]
    assert {k: pod_run.env.get(k) for k in contract} == contract
    assert contract["TRAINYARD_CHECKPOINT_DIR"] == str(spec.checkpoint_dir)
    assert contract["CUDA_VISIBLE_DEVICES"] == ""  # a CPU job sees no GPU
    assert pod_run.env["NVIDIA_VISIBLE_DEVICES"] == "void"
    if spec.resume_dir is not None:
        assert contract["TRAINYARD_RESUME_FROM"] == str(spec.resume_dir)
        assert "resume=epoch=4" in pod_run.lines and "dataset=imagenet-shard-0" in pod_run.lines
    if case == "shared-cwd":
        assert "input=hello" in pod_run.lines
    leaked = {k for k in pod_run.env if k.startswith("TRAINYARD_") and k not in spec.env} - {
        "TRAINYARD_CHECKPOINT_DIR",
        "TRAINYARD_ARTIFACT_DIR",
        "TRAINYARD_RESUME_FROM",
    }
    assert not leaked, leaked

    # Volumes: what the job wrote is on the node where the agent collects it, the same as before.
    assert process.files == pod_run.files
    assert pod_run.files[str(spec.checkpoint_dir / "step-1.pt")] == f"weights {spec.job_id}\n"
    assert pod_run.files[str(spec.artifact_dir / "metrics.json")] == '{"acc": 1}\n'
    if "WRITE_CWD" in spec.env:
        assert pod_run.files[str(spec.cwd / "scratch.txt")] == "scratch\n"
    assert pod["spec"]["containers"][0]["command"] == list(spec.command)

    # Limits and privileges as the runtime applied them.
    container = kube.inspected[pod["metadata"]["name"]]
    host = container["HostConfig"]
    assert (host["Memory"], host["CpuQuota"], host["CpuPeriod"]) == (256 << 20, 100_000, 100_000)
    assert container["Config"]["User"] == "65534:65534"
    assert "no-new-privileges" in host["SecurityOpt"]
    assert not container["EffectiveCaps"]


def test_a_pod_cannot_write_its_shared_working_directory(kube: KubePlay, tmp_path: Path) -> None:
    """A shared submit directory is mounted read-only, as the docker executor mounts it."""
    spec = _attempt(tmp_path, "shared-cwd")
    spec = dataclasses.replace(spec, env={**spec.env, "WRITE_CWD": "1"})
    os.chmod(spec.cwd, 0o777)  # the file modes would let the job write: the mount does not
    outcome, _ = _run_pod(kube, spec, tmp_path)
    assert outcome.status == ExitStatus(returncode=3)
    assert "Read-only file system" in outcome.stderr
    assert not (spec.cwd / "scratch.txt").exists()
