"""Start-up cleanup: a restarted agent kills the process groups its predecessor left running."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trainyard.worker.executors.process import PGID_FILE, reap_orphans

from .helpers import PY, alive, kill_quietly, wait_gone

pytestmark = pytest.mark.timeout(60)

TREE = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(child.pid, flush=True)
    time.sleep(600)
    """
)


def _spawn_group(env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, **env_extra}
    p = subprocess.Popen([PY, "-c", TREE], env=env, stdout=subprocess.PIPE, start_new_session=True)
    assert p.stdout is not None
    child = int(p.stdout.readline())
    return p, child


def _record(work_dir: Path, job_id: str, attempt: int, pgid: int) -> Path:
    d = work_dir / "jobs" / job_id / str(attempt)
    d.mkdir(parents=True)
    (d / PGID_FILE).write_text(str(pgid))
    return d / PGID_FILE


def test_reap_orphans_kills_recorded_groups_of_their_attempt(tmp_path: Path) -> None:
    ours, ours_child = _spawn_group({"TRAINYARD_JOB_ID": "j1", "TRAINYARD_ATTEMPT": "2"})
    # A group recorded for j2 whose processes do not carry j2's identity: a recycled id, not ours.
    stranger, stranger_child = _spawn_group({"TRAINYARD_JOB_ID": "other"})
    try:
        f1 = _record(tmp_path, "j1", 2, ours.pid)
        f2 = _record(tmp_path, "j2", 1, stranger.pid)
        found = reap_orphans(tmp_path)
        assert sorted(found) == [("j1", 2), ("j2", 1)]
        ours.wait(timeout=5)
        assert wait_gone(ours_child)
        assert alive(stranger.pid) and alive(stranger_child)
        assert not f1.exists() and not f2.exists()
    finally:
        for p in (ours, stranger):
            p.kill()
            p.wait()
        kill_quietly(ours_child)
        kill_quietly(stranger_child)


def test_reap_orphans_finds_a_group_whose_leader_is_gone(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import subprocess, sys
        c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.DEVNULL)
        print(c.pid, flush=True)
        """
    )
    env = {**os.environ, "TRAINYARD_JOB_ID": "j3", "TRAINYARD_ATTEMPT": "1"}
    leader = subprocess.Popen([PY, "-c", script], env=env, stdout=subprocess.PIPE, start_new_session=True)
    out, _ = leader.communicate(timeout=10)
    child = int(out)
    try:
        assert alive(child)
        _record(tmp_path, "j3", 1, leader.pid)
        assert reap_orphans(tmp_path) == [("j3", 1)]
        assert wait_gone(child)
    finally:
        kill_quietly(child)


def test_reap_orphans_with_nothing_recorded(tmp_path: Path) -> None:
    assert reap_orphans(tmp_path) == []
    (tmp_path / "jobs/j/1").mkdir(parents=True)
    assert reap_orphans(tmp_path) == []
    t0 = time.monotonic()
    assert time.monotonic() - t0 < 1
    assert sys.platform.startswith("linux")
