"""A sandboxed job enters its cgroup (v1) by a shell that moves itself before it runs bwrap, which
spares the agent an RCU grace period per spawn (issue 14); where that move fails, the gate moves the
sandbox's processes itself, as it did before. Either way nothing of the job runs outside its cgroup,
or without its CPU quota."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from trainyard.worker.cgroups import AttemptCgroup
from trainyard.worker.executors import process
from trainyard.worker.executors.process import ProcessExecutor
from trainyard.worker.isolation import Isolation, IsolationMode, IsolationSettings
from trainyard.worker.spool import LogSpool

from .helpers import PY, launch_spec, wait_for_output

pytestmark = pytest.mark.timeout(60)

JOB = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(30)"


@pytest.fixture
def v1() -> Iterator[ProcessExecutor]:
    """The executor with the real sandbox and cgroup v1 (required: nothing may be missing)."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    iso = Isolation(IsolationSettings(mode=IsolationMode.REQUIRED, worker=f"entry-{os.getpid()}"))
    if iso.problems() or iso.cgroups is None or iso.cgroups.version != 1:
        pytest.skip(f"needs the sandbox and cgroup v1: {iso.describe()}")
    yield ProcessExecutor(iso, watchdog=False)
    iso.sweep()
    for base in iso.cgroups.bases.values():
        base.rmdir()


def _members(cgroup: AttemptCgroup) -> list[set[int]]:
    return [{int(x) for x in p.read_text().split()} for p in cgroup.procs_files]


def _run_and_check(tmp_path: Path, ex: ProcessExecutor) -> None:
    async def main() -> None:
        spec = replace(launch_spec(tmp_path, [PY, "-c", JOB]), cpu=0.5)
        spool = LogSpool(spec.attempt_dir / "log", 1 << 20)
        handle = await ex.start(spec, spool)
        try:
            await wait_for_output(spool, b"pid")
            plan = handle._proto.plan
            assert plan is not None and plan.cgroup is not None
            # bwrap (the group's leader) and the job's processes, in every controller's cgroup.
            inside = _members(plan.cgroup)
            assert all(handle.pid in pids for pids in inside), (handle.pid, inside)
            assert all(len(pids) >= 3 for pids in inside), inside  # bwrap, its child, the job
            assert inside[0] == set(plan.cgroup.processes())
            # Lifted while the shell and bwrap started, the CPU quota is back before the job runs.
            assert plan.cgroup.limits.cpu == 0.5
            assert (plan.cgroup.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        finally:
            await handle.stop(1)
            await handle.wait()

    asyncio.run(main())


def test_the_sandbox_starts_inside_its_cgroup(
    tmp_path: Path, v1: ProcessExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    moves: list[tuple[Path, int]] = []
    monkeypatch.setattr(process, "write_pid", lambda procs, pid: moves.append((procs, pid)))
    _run_and_check(tmp_path, v1)
    assert moves == []  # the shell moved itself: the gate had nothing to move


def test_a_failed_self_move_is_left_to_the_gate(
    tmp_path: Path, v1: ProcessExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    moved = process._self_move_then_exec

    def nowhere(cgroup: AttemptCgroup, argv: list[str]) -> list[str]:
        wrapped = moved(cgroup, argv)
        # The shell's moves all fail (no such files): it must run bwrap all the same.
        return [a.replace("/tasks", "/no-such-file") for a in wrapped]

    monkeypatch.setattr(process, "_self_move_then_exec", nowhere)
    moves: list[tuple[Path, int]] = []
    write_pid = process.write_pid

    def recorded(procs: Path, pid: int) -> None:
        moves.append((procs, pid))
        write_pid(procs, pid)

    monkeypatch.setattr(process, "write_pid", recorded)
    _run_and_check(tmp_path, v1)
    assert len(moves) == 6  # bwrap and its child, in each of the three controllers


def test_the_shell_moves_itself_by_tasks_and_then_becomes_bwrap(tmp_path: Path) -> None:
    class Cg:
        dirs = {"memory": tmp_path / "m", "pids": tmp_path / "p"}

    argv = process._self_move_then_exec(Cg(), ["bwrap", "--", "true"])  # type: ignore[arg-type]
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[3:] == [
        "sh",
        str(tmp_path / "m" / "tasks"),
        str(tmp_path / "p" / "tasks"),
        "bwrap",
        "--",
        "true",
    ]
    assert argv[2].endswith('shift 2; exec "$@"')
