"""The docker executor against a real engine: Podman's Docker-compatible API on a unix socket.

The test starts `podman system service` itself, with its storage, state, temporary files and network
configuration in a temporary directory that goes afterwards (what stays on the host: Podman's blob-info
cache in /var/lib/containers/cache and runc's state directory /run/runc, empty), and since no registry
is reachable it builds its image locally: a rootfs of the host's dash, sleep and cat with the shared libraries they load,
imported with `podman import` (about 2 MB: quick to import, and to copy for each container).

Without podman the tests fail rather than skip (`make podman` installs it), so a CI image that lost
it is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import platform, wait_for, wait_status
from tests.unit.worker.helpers import launch_spec, wait_for_output
from trainyard.worker.executors.base import ExitStatus, LaunchSpec, StartFailed
from trainyard.worker.executors.docker import (
    LABEL_WORKER,
    DockerExecutor,
    DockerHandle,
    DockerSettings,
    Engine,
    EngineError,
    parse_ulimit,
    worker_label,
)
from trainyard.worker.spool import LogSpool

pytestmark = pytest.mark.timeout(120)

IMAGE = "localhost/trainyard-test:1"
MARKER = b"this file exists only in the test image\n"
# Podman's default ulimits (nofile=1048576, nproc=4194304) are above this machine's hard limits.
ULIMITS = ("nofile=1024:1024", "nproc=4096:4096")
WORKER = "docker-test"


@dataclasses.dataclass(frozen=True)
class Podman:
    url: str
    flags: tuple[str, ...]

    def settings(self, worker: str = WORKER, **kw: object) -> DockerSettings:
        base: dict[str, object] = {
            "host": self.url,
            "worker": worker,
            "ulimits": tuple(parse_ulimit(u) for u in ULIMITS),
            "pids_limit": 100,
        }
        base.update(kw)
        return DockerSettings(**base)  # type: ignore[arg-type]

    def executor(self, worker: str = WORKER, **kw: object) -> DockerExecutor:
        return DockerExecutor(self.settings(worker, **kw))

    def containers(self, worker: str = WORKER) -> list[str]:
        return [cid for cid, _ in Engine(self.url, 10).labelled(LABEL_WORKER, worker)]


def _rootfs_tar() -> bytes:
    """dash, sleep and cat with what `ldd` says they load, in a tar with root-owned entries."""
    files: dict[str, str] = {}
    for tool in ("/bin/sh", "/bin/sleep", "/bin/cat"):
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
        info = tarfile.TarInfo("etc/trainyard-image")
        info.size, info.mode = len(MARKER), 0o644
        tar.addfile(info, io.BytesIO(MARKER))
    return buf.getvalue()


def _unmount_under(root: Path) -> None:
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(str(root))]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    exe = shutil.which("podman")
    if exe is None:
        pytest.fail("podman is not installed (Debian: `make podman` installs podman and runc)")
    # Short: podman's attach sockets live under the run root, and a unix socket path has 108 bytes.
    top = Path(tempfile.mkdtemp(prefix="ty-podman-", dir="/tmp"))
    flags = (
        f"--root={top / 'root'}",
        f"--runroot={top / 'run'}",
        f"--tmpdir={top / 'tmp'}",
        f"--network-config-dir={top / 'net'}",
        f"--volumepath={top / 'volumes'}",
        # vfs works on any file system (overlay cannot sit on the overlay of a containerized CI).
        "--storage-driver=vfs",
        "--cgroup-manager=cgroupfs",
        "--events-backend=file",
        "--runtime=runc",
    )
    sock = top / "podman.sock"
    # Image copies stage under $TMPDIR (else /var/tmp).
    (top / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(top / "tmp")}
    log = (top / "service.log").open("wb")
    service = subprocess.Popen(
        [exe, *flags, "system", "service", "--time=0", f"unix://{sock}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        # conmon leaves an `oom` marker in its working directory when a container is OOM-killed.
        cwd=sock.parent,
    )
    url = f"unix://{sock}"
    try:
        engine = Engine(url, 5)

        def up() -> bool:
            if service.poll() is not None:
                raise AssertionError(f"podman system service exited: {(top / 'service.log').read_text()}")
            try:
                engine.ping()
            except EngineError:
                return False
            return True

        wait_for(up, 30, 0.1, "podman's API socket")
        tarball = top / "rootfs.tar"
        tarball.write_bytes(_rootfs_tar())
        subprocess.run(
            [exe, *flags, "import", "--quiet", str(tarball), IMAGE], check=True, capture_output=True, env=env
        )
        yield Podman(url, flags)
    finally:
        subprocess.run([exe, *flags, "rm", "--all", "--force"], check=False, capture_output=True)
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(5)
        log.close()
        _unmount_under(top)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_leftovers(podman: Podman) -> Iterator[None]:
    """Whatever a failed test left running goes with it, so that it does not fail the next ones too."""
    yield
    exe = shutil.which("podman")
    assert exe is not None
    subprocess.run([exe, *podman.flags, "rm", "--all", "--force"], check=False, capture_output=True)


def _spec(tmp_path: Path, script: str, **changes: object) -> LaunchSpec:
    spec = launch_spec(tmp_path, ["/bin/sh", "-c", script])
    return dataclasses.replace(spec, **{"image": IMAGE, "network": False, **changes})  # type: ignore[arg-type]


async def _start(executor: DockerExecutor, spec: LaunchSpec) -> tuple[DockerHandle, LogSpool]:
    spool = LogSpool(spec.attempt_dir / "log", 1 << 20)
    return await executor.start(spec, spool), spool


def _log(spool: LogSpool) -> bytes:
    return spool.read(0, spool.size)


def test_job_runs_in_the_image_and_its_output_streams(podman: Podman, tmp_path: Path) -> None:
    # Quiet for longer than an API call may take: the stream must not time out between chunks.
    executor = podman.executor(api_timeout_s=2.0)
    script = "echo out; echo err >&2; cat /etc/trainyard-image; sleep 3; echo late; echo late-err >&2"

    async def main() -> None:
        handle, spool = await _start(executor, _spec(tmp_path, script))
        assert handle.pid > 0
        await wait_for_output(spool, MARKER, timeout=10)
        await wait_for_output(spool, b"err\n", timeout=10)
        # Live: what the job printed is in the log while it still runs. The two streams are read
        # apart, so only each one's own order is fixed.
        live = _log(spool)
        assert live.replace(b"err\n", b"", 1) == b"out\n" + MARKER, live
        status = await asyncio.wait_for(handle.wait(), 30)
        assert status.ok, (status, _log(spool))
        final = _log(spool)
        assert final.startswith(live) and sorted(final[len(live) :].splitlines()) == [b"late", b"late-err"]
        assert spool.stderr_tail == b"err\nlate-err\n"  # stdout and stderr kept apart
        assert podman.containers() == []  # removed after

    asyncio.run(main())


def test_exit_code_env_limits_and_directories(podman: Podman, tmp_path: Path) -> None:
    script = (
        'echo "job=$TRAINYARD_JOB_ID attempt=$TRAINYARD_ATTEMPT cvd=[$CUDA_VISIBLE_DEVICES] pwd=$(pwd)"; '
        "echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max); "
        "echo pids=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max); "
        "echo cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max); "
        'echo model > "$TRAINYARD_ARTIFACT_DIR/model.txt"; echo step > "$TRAINYARD_CHECKPOINT_DIR/ckpt"; '
        "echo scratch > scratch.txt; exit 7"
    )
    spec = _spec(
        tmp_path,
        script,
        memory=64 << 20,
        cpu=0.5,
        env={"TRAINYARD_JOB_ID": "j-env", "TRAINYARD_ATTEMPT": "3"},
    )

    async def main() -> None:
        handle, spool = await _start(podman.executor(), spec)
        status = await asyncio.wait_for(handle.wait(), 30)
        out = _log(spool).decode()
        assert status == ExitStatus(returncode=7), out
        assert status.describe() == "exit code 7"
        assert f"job=j-env attempt=3 cvd=[] pwd={spec.cwd}\n" in out
        assert f"mem={64 << 20}\n" in out and "pids=100\n" in out
        assert "cpu=50000\n" in out or "cpu=50000 100000\n" in out
        # Bind-mounted at the same paths: the agent finds what the job wrote where it collects it.
        assert (spec.artifact_dir / "model.txt").read_text() == "model\n"
        assert (spec.checkpoint_dir / "ckpt").read_text() == "step\n"
        assert (spec.cwd / "scratch.txt").read_text() == "scratch\n"

    asyncio.run(main())


def test_stop_gives_the_job_its_grace(podman: Podman, tmp_path: Path) -> None:
    polite = 'trap "echo got-term; exit 3" TERM; echo ready; while :; do sleep 0.1; done'
    # Ignores SIGTERM: killed when the grace ends; with a memory limit, and not reported as an OOM.
    stubborn = 'trap "" TERM; echo ready; while :; do sleep 0.1; done'

    async def main() -> None:
        executor = podman.executor()
        (h1, s1), (h2, s2) = await asyncio.gather(
            _start(executor, _spec(tmp_path / "a", polite)),
            _start(executor, _spec(tmp_path / "b", stubborn, memory=64 << 20)),
        )
        await asyncio.gather(wait_for_output(s1, b"ready\n"), wait_for_output(s2, b"ready\n"))
        t0 = time.monotonic()
        await asyncio.wait_for(h1.stop(10.0), 15)
        assert time.monotonic() - t0 < 5.0  # it left on SIGTERM, well within its grace
        assert await h1.wait() == ExitStatus(returncode=3)
        assert _log(s1) == b"ready\ngot-term\n"
        t0 = time.monotonic()
        await asyncio.wait_for(h2.stop(1.0), 15)
        took = time.monotonic() - t0
        assert 0.9 <= took < 6.0, took
        status = await h2.wait()
        assert status == ExitStatus(signal=9) and not status.oom, status
        assert podman.containers() == []

    asyncio.run(main())


def test_memory_limit_oom_is_reported(podman: Podman, tmp_path: Path) -> None:
    # The string doubles until the container's 32 MiB are gone.
    hog = 'x=0123456789abcdef; while :; do x="$x$x"; done'

    async def main() -> None:
        handle, _ = await _start(podman.executor(), _spec(tmp_path, hog, memory=32 << 20))
        status = await asyncio.wait_for(handle.wait(), 30)
        assert status.oom and status.memory_limit == 32 << 20 and status.exit_code == 137, status
        assert status.describe().startswith("oom: out of memory, the job exceeded its memory limit of 32Mi")

    asyncio.run(main())


def test_start_failures_are_clear_and_leave_nothing(podman: Podman, tmp_path: Path) -> None:
    async def main() -> None:
        executor = podman.executor()
        missing = dataclasses.replace(_spec(tmp_path, ""), command=("/bin/no-such-tool",))
        with pytest.raises(StartFailed, match=r"command not found in image .*: /bin/no-such-tool"):
            await _start(executor, missing)
        # Nothing listens on port 1: the pull fails at once rather than after a DNS timeout.
        absent = _spec(tmp_path, "true", image="localhost:1/trainyard/absent:1")
        with pytest.raises(StartFailed, match=r"cannot pull image localhost:1/trainyard/absent:1"):
            await _start(executor, absent)
        gpu = _spec(tmp_path, "true", gpu_indices=(0,))
        with pytest.raises(StartFailed, match=r"is Podman, whose Docker API ignores GPU device requests"):
            await _start(executor, gpu)
        nowhere = DockerExecutor(
            dataclasses.replace(podman.settings(), host="unix:///nonexistent/docker.sock")
        )
        with pytest.raises(StartFailed, match=r"cannot reach the container engine at unix:///nonexistent"):
            await _start(nowhere, _spec(tmp_path, "true"))
        assert podman.containers() == []

    asyncio.run(main())


def test_orphans_of_an_earlier_run_are_removed(podman: Podman, tmp_path: Path) -> None:
    async def main() -> None:
        mine = podman.executor(worker="orphans-mine")
        theirs = podman.executor(worker="orphans-theirs")
        h1, s1 = await _start(mine, _spec(tmp_path / "a", "echo up; while :; do sleep 0.1; done"))
        h2, s2 = await _start(theirs, _spec(tmp_path / "b", "echo up; while :; do sleep 0.1; done"))
        await asyncio.gather(wait_for_output(s1, b"up\n"), wait_for_output(s2, b"up\n"))
        # The agent restarted: a new executor of the same worker finds its containers by their labels.
        again = podman.executor(worker="orphans-mine")
        assert await asyncio.to_thread(again.reap_orphans, tmp_path) == [("job1", 1)]
        assert podman.containers("orphans-mine") == []
        assert (await asyncio.wait_for(h1.wait(), 20)).exit_code == 137
        assert len(podman.containers("orphans-theirs")) == 1  # another worker's: left alone
        h2.kill()
        assert (await asyncio.wait_for(h2.wait(), 20)).exit_code == 137
        assert podman.containers("orphans-theirs") == []

    asyncio.run(main())


def test_a_job_with_an_image_through_the_platform(podman: Podman, tmp_path: Path) -> None:
    args = ["--docker-host", podman.url, "--no-job-network"]
    for u in ULIMITS:
        args += ["--docker-ulimit", u]
    script = 'echo "hello from $TRAINYARD_JOB_ID in $(cat /etc/trainyard-image)"; echo result > "$TRAINYARD_ARTIFACT_DIR/result.txt"'
    with platform(tmp_path, agent_args=tuple(args)) as (cp, agents), cp.client() as c:
        r = c.post(
            "/v1/jobs",
            json={"command": ["/bin/sh", "-c", script], "image": IMAGE, "resources": {"memory": "64Mi"}},
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        job = wait_status(c, job_id, {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}, 60)
        assert job["status"] == "SUCCEEDED", (job, agents[0].output()[-3000:])
        logs = c.get(f"/v1/jobs/{job_id}/logs").content
        assert f"hello from {job_id} in ".encode() + MARKER == logs
        arts = {a["path"]: a for a in c.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]}
        assert set(arts) == {"result.txt"}
        assert httpx.get(arts["result.txt"]["url"]).content == b"result\n"
        label = worker_label("agent-1", (cp.home / "workers" / "agent-1").resolve())
        wait_for(lambda: podman.containers(label) == [], 10, 0.1, "the container to be removed")
    with contextlib.suppress(FileNotFoundError):
        assert not list((tmp_path / "home" / "workers" / "agent-1" / "kept").iterdir())
