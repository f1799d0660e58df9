"""Helpers for the worker tests: run one command through the process executor, check for processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from trainyard.worker.executors.base import LaunchSpec
from trainyard.worker.executors.process import ProcessExecutor, ProcessHandle
from trainyard.worker.spool import LogSpool

PY = sys.executable


def launch_spec(
    tmp_path: Path,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    gpus: Sequence[int] = (),
    job_id: str = "job1",
    attempt: int = 1,
) -> LaunchSpec:
    adir = tmp_path / "jobs" / job_id / str(attempt)
    for d in ("checkpoints", "artifacts", "work"):
        (adir / d).mkdir(parents=True, exist_ok=True)
    return LaunchSpec(
        job_id=job_id,
        attempt=attempt,
        command=tuple(command),
        env={"TRAINYARD_JOB_ID": job_id, "TRAINYARD_ATTEMPT": str(attempt), **(env or {})},
        cwd=adir / "work",
        attempt_dir=adir,
        checkpoint_dir=adir / "checkpoints",
        artifact_dir=adir / "artifacts",
        gpu_indices=tuple(gpus),
    )


async def start(spec: LaunchSpec, max_log_bytes: int = 1 << 20) -> tuple[ProcessHandle, LogSpool]:
    spool = LogSpool(spec.attempt_dir / "log", max_log_bytes)
    handle = await ProcessExecutor().start(spec, spool)
    return handle, spool


async def wait_for_output(spool: LogSpool, needle: bytes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in spool.read(0, spool.size):
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} never appeared; log: {spool.read(0, spool.size)!r}")
        await asyncio.sleep(0.01)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a container's init may reap late)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


async def wait_gone_async(pid: int, timeout: float = 5.0) -> bool:
    """wait_gone for tests whose agent shares the event loop: it must keep running meanwhile."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def wait_for_async(pred: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``pred`` until it is true, keeping the event loop (and an agent on it) running."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
