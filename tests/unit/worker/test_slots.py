"""Attempt directories are reused when an attempt leaves them empty, and say who holds them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from trainyard.worker.executors.process import reap_orphans
from trainyard.worker.slots import OWNER_FILE, SUBDIRS, AttemptSlots, read_owner, write_owner

from .helpers import PY, alive, kill_quietly, wait_gone


def test_an_empty_slot_is_reused_as_it_is(tmp_path: Path) -> None:
    slots = AttemptSlots(tmp_path)
    a = slots.acquire("j1", 1)
    assert all((a / sub).is_dir() for sub in SUBDIRS)
    assert read_owner(a / OWNER_FILE) == (0, "j1", 1)
    (a / "log").write_bytes(b"output of j1\n")
    assert slots.release(a)
    assert read_owner(a / OWNER_FILE) is None and (a / "log").read_bytes() == b""
    b = slots.acquire("j2", 3)
    assert b == a and read_owner(b / OWNER_FILE) == (0, "j2", 3)


def test_a_slot_with_leftovers_is_not_reused(tmp_path: Path) -> None:
    slots = AttemptSlots(tmp_path)
    for leftover in ("artifacts/model.npz", "work/scratch", "resume"):
        slot = slots.acquire("j1", 1)
        (slot / leftover).parent.mkdir(parents=True, exist_ok=True)
        (slot / leftover).write_text("x")
        assert not slots.release(slot)  # the caller removes it
        assert slots.acquire("j2", 1) != slot  # a fresh one, not the dirty one


def test_reaper_reads_slot_owners_and_reset_empties_the_pool(tmp_path: Path) -> None:
    env = {**os.environ, "TRAINYARD_JOB_ID": "j9", "TRAINYARD_ATTEMPT": "2"}
    proc = subprocess.Popen([PY, "-c", "import time; time.sleep(600)"], env=env, start_new_session=True)
    try:
        slots = AttemptSlots(tmp_path)
        running = slots.acquire("j9", 2)
        write_owner(running, proc.pid, "j9", 2)
        idle = slots.acquire("j5", 1)  # never started (pgid 0): still an attempt this node held
        free = slots.acquire("j6", 1)
        assert slots.release(free)
        assert sorted(reap_orphans(tmp_path)) == [("j5", 1), ("j9", 2)]
        proc.wait(timeout=5)
        assert wait_gone(proc.pid)
        slots.reset()
        assert not (tmp_path / "slots").exists() and not idle.exists()
    finally:
        if alive(proc.pid):
            kill_quietly(proc.pid)
        proc.wait()
