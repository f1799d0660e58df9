"""The sandbox gate sets the job's CPU quota again before it lets the job run, whatever went wrong
moving the sandbox into its cgroup (the quota is lifted for the sandbox's own start)."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from trainyard.worker.cgroups import Limits
from trainyard.worker.executors.process import _Gate


@dataclass
class FakeCgroup:
    procs_files: list[Path]
    limits: Limits = field(default_factory=Limits)
    applied: list[Limits] = field(default_factory=list)

    def apply(self, limits: Limits) -> None:
        self.applied.append(limits)
        self.limits = limits


def _admit(gate: _Gate, cgroup: FakeCgroup) -> str | None:
    os.write(gate.info_w, json.dumps({"child-pid": os.getpid()}).encode())

    async def main() -> str | None:
        return await gate.admit(asyncio.get_running_loop(), os.getpid(), cgroup)  # type: ignore[arg-type]

    return asyncio.run(main())


def test_a_failed_move_still_sets_the_quota_again_before_the_job_runs(tmp_path: Path) -> None:
    quota = Limits(memory=1 << 30, cpu=0.1)
    cgroup = FakeCgroup([tmp_path], limits=Limits(memory=1 << 30))  # a directory: the write fails
    gate = _Gate()
    gate.restore = quota
    problem = _admit(gate, cgroup)
    assert problem is not None  # reported: the caller fails the start or warns, by its mode
    assert cgroup.limits == quota and cgroup.applied == [quota]
    assert os.read(gate.block_r, 1) == b"1"  # and only then was the job let go


def test_a_good_move_sets_the_quota_again(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    quota = Limits(cpu=0.5)
    cgroup = FakeCgroup([procs])
    gate = _Gate()
    gate.restore = quota
    assert _admit(gate, cgroup) is None
    assert cgroup.limits == quota
    assert os.read(gate.block_r, 1) == b"1"
