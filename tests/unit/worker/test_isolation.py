"""Isolation: bwrap argv rules, cgroup v2 against a fake tree, the required/best-effort policy, and the
real sandbox through the process executor (stop grace, OOM, reaping)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from trainyard.worker.cgroups import CgroupManager, Limits
from trainyard.worker.executors.base import ExitStatus, StartFailed
from trainyard.worker.executors.process import ProcessExecutor, reap_orphans
from trainyard.worker.isolation import Isolation, IsolationMode, IsolationSettings
from trainyard.worker.sandbox import SandboxRefused, SandboxSpec, bwrap_argv
from trainyard.worker.slots import write_owner
from trainyard.worker.spool import LogSpool

from .helpers import PY, launch_spec, wait_for_output, wait_gone_async

pytestmark = pytest.mark.timeout(60)


# -- bwrap argv ---------------------------------------------------------------------------------------


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_argv_hides_protected_dirs_and_binds_only_the_jobs_own(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "home" / "workers" / "w1"
    own = work / "slots" / "s1"
    for d in ("checkpoints", "artifacts", "work"):
        (own / d).mkdir(parents=True)
    argv = bwrap_argv(
        "bwrap",
        SandboxSpec(
            command=["python", "train.py"],
            cwd=own / "work",
            writable=[own / "checkpoints", own / "artifacts", own / "work"],
            protected=[home, work],
            network=False,
        ),
    )
    assert argv[0] == "bwrap" and argv[-3:] == ["--", "python", "train.py"]
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-net", "--die-with-parent"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert _pairs(argv, "--ro-bind")[0] == "/"
    tmpfs = _pairs(argv, "--tmpfs")
    assert {"/tmp", "/var/tmp", "/run", str(home), str(work)} <= set(tmpfs)
    binds = _pairs(argv, "--bind")
    assert binds == [str(own / "checkpoints"), str(own / "artifacts"), str(own / "work")]
    # Order matters (later mounts win): the hiding comes before the job's own directories.
    assert argv.index(str(work)) < argv.index(str(own / "work"))
    assert argv[argv.index("--chdir") + 1] == str(own / "work")


def test_a_checkout_in_tmp_stays_visible_but_its_home_stays_hidden_and_job_dirs_writable() -> None:
    """`make up` in a checkout under /tmp: the checkout (the agent's venv and code, the examples) is
    bound back over the private /tmp, read-only; its `.trainyard` home is hidden again after that;
    the job's own directories inside the home are writable; nothing re-covers them afterwards."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        _check_checkout_in_tmp(Path(tmp) / "repo")


def _check_checkout_in_tmp(checkout: Path) -> None:
    home = checkout / ".trainyard"
    own = home / "workers" / "w1" / "slots" / "s1"
    for d in ("checkpoints", "artifacts", "work"):
        (own / d).mkdir(parents=True)
    venv = checkout / ".venv"
    venv.mkdir()
    argv = bwrap_argv(
        "bwrap",
        SandboxSpec(
            command=["python", "train.py"],
            cwd=checkout,
            writable=[own / "checkpoints", own / "artifacts", own / "work"],
            protected=[home],
            agent_install=[venv, checkout / "src" / "trainyard"],
            agent_visible=[venv, checkout],
        ),
    )
    real = str(Path(os.path.realpath(checkout)))
    mounts = [(argv[i], argv[i + 1]) for i in range(len(argv) - 1) if argv[i].startswith("--")]
    at = {m: i for i, m in enumerate(mounts)}
    visible = at[("--ro-bind", real)]
    hidden = at[("--tmpfs", str(Path(os.path.realpath(home))))]
    ckpt = at[("--bind", str(Path(os.path.realpath(own / "checkpoints"))))]
    assert at[("--tmpfs", "/tmp")] < visible < hidden < ckpt
    # Nothing mounted after the job's directories covers them or the home again.
    later = [p for flag, p in mounts[ckpt:] if flag in ("--ro-bind", "--bind", "--tmpfs")]
    assert real not in later and str(Path(os.path.realpath(home))) not in later


def test_network_stays_unless_switched_off(tmp_path: Path) -> None:
    argv = bwrap_argv("bwrap", SandboxSpec(command=["true"], cwd=tmp_path, writable=[]))
    assert "--unshare-net" not in argv


def test_submit_dir_is_writable_but_system_dirs_and_the_agent_install_are_not(tmp_path: Path) -> None:
    venv = tmp_path / "repo" / ".venv"
    venv.mkdir(parents=True)
    argv = bwrap_argv(
        "bwrap", SandboxSpec(command=["true"], cwd=tmp_path / "repo", writable=[], agent_install=[venv])
    )
    assert _pairs(argv, "--bind") == [str(tmp_path / "repo")]
    assert str(venv) in _pairs(argv, "--ro-bind")  # inside the writable submit dir: read-only again
    argv = bwrap_argv("bwrap", SandboxSpec(command=["true"], cwd=Path("/usr/lib"), writable=[]))
    assert _pairs(argv, "--bind") == []
    argv = bwrap_argv("bwrap", SandboxSpec(command=["true"], cwd=Path("/"), writable=[]))
    assert _pairs(argv, "--bind") == []


def test_cwd_inside_a_protected_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxRefused, match="protected directory"):
        bwrap_argv(
            "bwrap",
            SandboxSpec(
                command=["true"], cwd=tmp_path / "home" / "x", writable=[], protected=[tmp_path / "home"]
            ),
        )


def test_gpu_jobs_get_only_their_devices(tmp_path: Path) -> None:
    argv = bwrap_argv("bwrap", SandboxSpec(command=["true"], cwd=tmp_path, writable=[], gpu_indices=[2]))
    devs = _pairs(argv, "--dev-bind-try")
    assert "/dev/nvidia2" in devs and "/dev/nvidiactl" in devs and "/dev/nvidia0" not in devs
    assert (
        _pairs(
            bwrap_argv("bwrap", SandboxSpec(command=["true"], cwd=tmp_path, writable=[])), "--dev-bind-try"
        )
        == []
    )


# -- cgroup v2 against a fake tree ----------------------------------------------------------------------


def _fake_v2(tmp_path: Path, controllers: str = "cpu memory pids io") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    own = root / "agent.slice"
    own.mkdir(parents=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.controllers").write_text(controllers + "\n")
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/agent.slice\n")
    return root, proc


def test_v2_layout_limits_and_oom_count(tmp_path: Path) -> None:
    root, proc = _fake_v2(tmp_path)
    mgr, missing = CgroupManager.detect("w 1", root=root, proc_cgroup=proc)
    assert mgr is not None and mgr.version == 2 and missing == []
    base = root / "agent.slice" / "trainyard-w_1"
    assert (root / "agent.slice" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    cg = mgr.acquire(Limits(memory=256 << 20, cpu=1.5, pids=64))
    d = cg.dirs[""]
    assert d.parent == base
    assert (d / "memory.max").read_text() == str(256 << 20)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert (d / "pids.max").read_text() == "64"
    assert (d / "memory.oom.group").read_text() == "1"
    assert cg.procs_files == [d / "cgroup.procs"]
    assert not cg.oom_killed()
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_killed()
    # Back to the pool and reused: the limits change, the OOM count starts from the new baseline.
    (d / "cgroup.procs").write_text("")
    cg.release()
    again = mgr.acquire(Limits(memory=0, cpu=0.0, pids=0))
    assert again is cg
    assert (d / "memory.max").read_text() == "max" and (d / "cpu.max").read_text() == "max 100000"
    assert (d / "pids.max").read_text() == "max"
    assert not again.oom_killed()


def test_v2_moves_the_agent_out_of_a_cgroup_that_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from trainyard.worker import cgroups

    root, proc = _fake_v2(tmp_path)
    own = root / "agent.slice"
    (own / "cgroup.procs").write_text("4242\n")
    real_write = cgroups._write
    calls: list[Path] = []

    def write(path: Path, value: str) -> None:
        calls.append(path)
        # The kernel's "no internal processes" rule, until the agent has left.
        if path == own / "cgroup.subtree_control" and (own / "cgroup.procs").read_text().strip():
            raise OSError(errno.EBUSY, "busy")
        real_write(path, value)
        if path.name == "cgroup.procs" and path.parent.name == "trainyard-agent":
            (own / "cgroup.procs").write_text("")

    monkeypatch.setattr(cgroups, "_write", write)
    mgr, _ = CgroupManager.detect("w", root=root, proc_cgroup=proc)
    assert mgr is not None
    assert (own / "trainyard-agent" / "cgroup.procs").read_text() == "4242"
    assert (own / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"


def test_v2_missing_controllers_are_named(tmp_path: Path) -> None:
    root, proc = _fake_v2(tmp_path, "cpu io")
    mgr, missing = CgroupManager.detect("w", root=root, proc_cgroup=proc)
    assert mgr is not None and mgr.controllers == ("cpu",)
    assert any("'memory'" in m for m in missing) and any("'pids'" in m for m in missing)


# -- policy ----------------------------------------------------------------------------------------------


def _no_bwrap(mode: IsolationMode, tmp_path: Path) -> Isolation:
    root, proc = _fake_v2(tmp_path)
    return Isolation(
        IsolationSettings(
            mode=mode, worker="w", bwrap=str(tmp_path / "no-bwrap"), cgroup_root=root, proc_cgroup=proc
        )
    )


def test_required_refuses_what_it_cannot_isolate(tmp_path: Path) -> None:
    iso = _no_bwrap(IsolationMode.REQUIRED, tmp_path)
    assert iso.sandbox_problem is not None
    spec = launch_spec(tmp_path, ["true"])
    with pytest.raises(StartFailed, match="isolation required but this worker cannot apply the sandbox"):
        iso.plan(spec, ["true"])


def test_best_effort_runs_and_warns_once_per_feature(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    iso = _no_bwrap(IsolationMode.BEST_EFFORT, tmp_path)
    spec = replace(launch_spec(tmp_path, ["true"]), memory=64 << 20)
    with caplog.at_level(logging.WARNING, logger="trainyard.worker.isolation"):
        plans = [iso.plan(spec, ["true"]) for _ in range(3)]
    assert all(not p.sandboxed and p.cgroup is not None for p in plans)
    warnings = [r.getMessage() for r in caplog.records if "ISOLATION" in r.getMessage()]
    assert len(warnings) == 1 and "the sandbox" in warnings[0], warnings


def test_oom_reason_names_the_limit() -> None:
    status = ExitStatus(signal=9, oom=True, memory_limit=96 << 20)
    assert status.describe().startswith("oom: ") and "96Mi" in status.describe()
    assert status.exit_code == 137


# -- the real sandbox ----------------------------------------------------------------------------------


@pytest.fixture
def real() -> Iterator[ProcessExecutor]:
    """The executor with the real sandbox and cgroups (required: nothing may be missing here)."""
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap (bwrap) is not installed: `make install` installs it")
    iso = Isolation(IsolationSettings(mode=IsolationMode.REQUIRED, worker=f"unit-{os.getpid()}"))
    assert iso.problems() == [], iso.problems()
    yield ProcessExecutor(iso)
    iso.sweep()
    assert iso.cgroups is not None
    for base in iso.cgroups.bases.values():
        base.rmdir()


def _script(tmp_path: Path, body: str) -> Path:
    # Outside /tmp: the sandbox's /tmp is private. The attempt's work dir is the job's own.
    path = tmp_path / "jobs" / "job1" / "1" / "work" / "job.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return path


def test_sandboxed_job_gets_its_grace_on_stop(tmp_path: Path, real: ProcessExecutor) -> None:
    ex = real
    script = _script(
        tmp_path,
        """
        import signal, sys, time
        def term(*_):
            time.sleep(0.3)
            print("checkpointed", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, term)
        print("ready", flush=True)
        time.sleep(30)
        """,
    )

    async def main() -> None:
        spec = launch_spec(tmp_path, [PY, str(script)])
        spool = LogSpool(spec.attempt_dir / "log", 1 << 20)
        handle = await ex.start(spec, spool)
        await wait_for_output(spool, b"ready")
        await handle.stop(10)
        status = await handle.wait()
        # bwrap would have died of SIGTERM and SIGKILLed the job at once; the job got to checkpoint.
        assert status.ok, (status, spool.read(0, spool.size))
        assert b"checkpointed" in spool.read(0, spool.size)

    asyncio.run(main())


def test_sandboxed_oom_is_reported(tmp_path: Path, real: ProcessExecutor) -> None:
    ex = real

    async def main() -> None:
        spec = replace(launch_spec(tmp_path, [PY, "-c", "x = b'1' * (400 << 20)"]), memory=64 << 20)
        handle = await ex.start(spec, LogSpool(spec.attempt_dir / "log", 1 << 20))
        status = await handle.wait()
        assert status.oom and status.signal == signal.SIGKILL, status
        assert status.describe().startswith("oom")
        spec = replace(launch_spec(tmp_path, [PY, "-c", "x = b'1' * (16 << 20)"]), memory=64 << 20)
        handle = await ex.start(spec, LogSpool(spec.attempt_dir / "log", 1 << 20))
        status = await handle.wait()  # the same (pooled) cgroup: no stale OOM count
        assert status.ok and not status.oom, status

    asyncio.run(main())


def test_missing_command_is_a_start_failure_in_the_sandbox(tmp_path: Path, real: ProcessExecutor) -> None:
    ex = real

    async def main() -> None:
        with pytest.raises(StartFailed, match="command not found: no-such-command-xyz"):
            await ex.start(launch_spec(tmp_path, ["no-such-command-xyz"]), LogSpool(tmp_path / "log", 1024))

    asyncio.run(main())


def test_reaper_finds_sandboxed_processes_by_their_environment(tmp_path: Path, real: ProcessExecutor) -> None:
    async def main() -> None:
        spec = launch_spec(tmp_path, [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"])
        spool = LogSpool(spec.attempt_dir / "log", 1 << 20)
        handle = await real.start(spec, spool)
        await wait_for_output(spool, b"up")
        plan = handle._proto.plan
        assert plan is not None and plan.cgroup is not None
        procs = plan.cgroup.processes()
        assert handle.pid in procs and len(procs) >= 3  # bwrap, the sandbox's init, the job
        # As an agent that crashed would have left it: the slot records the group. The job's host-side
        # environment still carries its TRAINYARD_JOB_ID/ATTEMPT, PID namespace or not.
        slot = tmp_path / "slots" / "s1"
        slot.mkdir(parents=True)
        write_owner(slot, handle.pid, "job1", 1)
        assert reap_orphans(tmp_path) == [("job1", 1)]
        for pid in procs:
            assert await wait_gone_async(pid), pid
        status = await handle.wait()
        assert status.exit_code == 137, status

    asyncio.run(main())
