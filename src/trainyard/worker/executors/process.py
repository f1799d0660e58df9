"""The process executor: each attempt is a local process group in a session of its own."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from trainyard.worker.executors.base import ExitStatus, LaunchSpec, LogSink, StartFailed
from trainyard.worker.slots import OWNER_FILE, SLOTS_DIR, read_owner, write_owner

log = logging.getLogger(__name__)

PGID_FILE = "pgid"  # the layout of agents before slots: jobs/<job>/<attempt>/pgid

_DRAIN_TIMEOUT_S = 5.0
"""After the process group is killed, how long its pipes may stay open (a descendant that left the group
with setsid still holds them) before we stop reading them."""


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The group id was recycled for someone else's process: it is not ours to signal.
        log.warning("no permission to signal process group %d", pgid)
        return False
    return True


class _Protocol(asyncio.SubprocessProtocol):
    """Feeds pipe bytes to the sink as the event loop reads them, and cleans the group up on exit.

    Callbacks rather than reader tasks: both pipes land in the sink in true arrival order, and a job
    costs no tasks of its own.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: LogSink) -> None:
        self._loop = loop
        self._sink = sink
        self._sink_failed = False
        self.transport: asyncio.SubprocessTransport | None = None
        self.pgid = 0
        self.exited: asyncio.Future[ExitStatus] = loop.create_future()
        self.done: asyncio.Future[ExitStatus] = loop.create_future()
        self._drain_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        try:
            self._sink.write(fd, data)
        except Exception:
            # A full disk must not kill the job through a closed pipe; the job keeps running unlogged.
            if not self._sink_failed:
                log.exception("cannot store output of process group %d; dropping it", self.pgid)
            self._sink_failed = True

    def process_exited(self) -> None:
        assert self.transport is not None
        rc = self.transport.get_returncode()
        status = ExitStatus(signal=-rc) if rc is not None and rc < 0 else ExitStatus(returncode=rc)
        # Whatever the main process left behind in its group goes with it: no orphans.
        if self.pgid:
            _killpg(self.pgid, signal.SIGKILL)
        if not self.exited.done():
            self.exited.set_result(status)
        self._drain_timer = self._loop.call_later(_DRAIN_TIMEOUT_S, self._force_close)

    def _force_close(self) -> None:
        if self.transport is not None and not self.done.done():
            log.warning("process group %d: a descendant outside the group keeps its pipes open", self.pgid)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(self.exited.result() if self.exited.done() else ExitStatus())


class ProcessHandle:
    def __init__(self, proto: _Protocol) -> None:
        self._proto = proto

    @property
    def pid(self) -> int:
        return self._proto.pgid

    @property
    def exited(self) -> bool:
        return self._proto.exited.done()

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._proto.done)

    async def stop(self, grace_s: float) -> None:
        if self._proto.exited.done():
            return
        _killpg(self._proto.pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._proto.exited), grace_s)
        except TimeoutError:
            _killpg(self._proto.pgid, signal.SIGKILL)
            await asyncio.shield(self._proto.exited)

    def kill(self) -> None:
        _killpg(self._proto.pgid, signal.SIGKILL)


_WHICH_TTL_S = 5.0


class ProcessExecutor:
    """Runs the command as a local process in a new session, so that its whole tree is one group."""

    def __init__(self) -> None:
        # The agent's own TRAINYARD_* settings (its worker token among them) are not the job's business.
        # Filtered once: walking os.environ for every job is a measurable share of a short job's cost.
        self._base_env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        self._base_env["PYTHONUNBUFFERED"] = "1"
        self._which: dict[tuple[str, str], tuple[str, float]] = {}

    def _resolve(self, program: str, path: str | None) -> str | None:
        """Where ``program`` is on the job's PATH, remembered for a few seconds (as a shell's command
        hash does): otherwise every spawn searches PATH with one failed exec per directory before it.
        None (let exec search) for explicit paths, unknown names and relative PATH entries."""
        if os.sep in program or not path:
            return None
        key = (program, path)
        now = time.monotonic()
        hit = self._which.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        found = shutil.which(program, path=path)
        if found is None or not os.path.isabs(found):
            return None
        if len(self._which) > 1024:
            self._which.clear()
        self._which[key] = (found, now + _WHICH_TTL_S)
        return found

    def environment(self, spec: LaunchSpec) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(spec.env)
        env["TRAINYARD_CHECKPOINT_DIR"] = str(spec.checkpoint_dir)
        env["TRAINYARD_ARTIFACT_DIR"] = str(spec.artifact_dir)
        if spec.resume_dir is not None:
            env["TRAINYARD_RESUME_FROM"] = str(spec.resume_dir)
        else:
            env.pop("TRAINYARD_RESUME_FROM", None)
        # Empty rather than unset: a CPU job must not see the node's GPUs.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in spec.gpu_indices)
        return env

    async def start(self, spec: LaunchSpec, sink: LogSink) -> ProcessHandle:
        if not spec.command:
            raise StartFailed("empty command")
        loop = asyncio.get_running_loop()
        proto = _Protocol(loop, sink)
        try:
            env = self.environment(spec)
            transport, _ = await loop.subprocess_exec(
                lambda: proto,
                *spec.command,
                executable=self._resolve(spec.command[0], env.get("PATH")),
                cwd=spec.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as e:
            raise StartFailed(_start_error(spec, e)) from e
        except ValueError as e:  # an argument with a NUL byte
            raise StartFailed(f"cannot start {spec.command[0]!r}: {e}") from e
        pid = transport.get_pid()
        proto.pgid = pid
        try:
            # Kept after the process ends (until its slot is released): the reaper checks a group's
            # processes before it kills, so a stale record is harmless.
            write_owner(spec.attempt_dir, pid, spec.job_id, spec.attempt)
        except OSError:
            log.warning("cannot record process group %d in %s", pid, spec.attempt_dir, exc_info=True)
        if proto.exited.done():
            # It exited before the group id was known: its leftovers could not be killed then.
            _killpg(pid, signal.SIGKILL)
        return ProcessHandle(proto)

    def reap_orphans(self, work_dir: Path) -> list[tuple[str, int]]:
        return reap_orphans(work_dir)


def _start_error(spec: LaunchSpec, e: OSError) -> str:
    argv0 = spec.command[0]
    what = {
        FileNotFoundError: "command not found",
        PermissionError: "command not executable",
        NotADirectoryError: "working directory is not a directory",
    }.get(type(e), "cannot start command")
    if isinstance(e, FileNotFoundError | NotADirectoryError) and e.filename not in (None, argv0):
        # subprocess reports a missing working directory as the FileNotFoundError of its path.
        if str(e.filename) == str(spec.cwd):
            what = "working directory not found"
        return f"{what}: {e.filename}"
    return f"{what}: {argv0}" + (f" ({e.strerror})" if e.strerror and what == "cannot start command" else "")


def reap_orphans(work_dir: Path) -> list[tuple[str, int]]:
    """SIGKILL process groups that attempts of an earlier agent run recorded and that still run.

    A group counts as that attempt's only while one of its processes carries the attempt's
    TRAINYARD_JOB_ID and TRAINYARD_ATTEMPT in its environment, so a recycled group id is left alone.
    Returns the (job_id, attempt) of every attempt that held a slot (or, in the layout of agents
    before slots, had a pgid file).
    """
    recorded: dict[int, tuple[str, int]] = {}
    found: list[tuple[str, int]] = []
    files: list[Path] = []
    for owner_file in sorted((work_dir / SLOTS_DIR).glob(f"*/{OWNER_FILE}")):
        held = read_owner(owner_file)
        if held is None:
            continue  # a free slot
        pgid, job_id, attempt = held
        found.append((job_id, attempt))
        if pgid > 1:
            recorded[pgid] = (job_id, attempt)
    for pgid_file in sorted((work_dir / "jobs").glob(f"*/*/{PGID_FILE}")):
        attempt_dir = pgid_file.parent
        try:
            key = (attempt_dir.parent.name, int(attempt_dir.name))
            pgid = int(pgid_file.read_text().strip())
        except (ValueError, OSError):
            log.warning("ignoring unreadable %s", pgid_file)
            continue
        found.append(key)
        files.append(pgid_file)
        if pgid > 1:
            recorded[pgid] = key
    if recorded:
        for pid, pgrp in _processes():
            owner = recorded.get(pgrp)
            if owner is None or not _environ_matches(pid, owner):
                continue
            if _killpg(pgrp, signal.SIGKILL):
                log.warning("killed process group %d left running by attempt %s/%d", pgrp, *owner)
            del recorded[pgrp]
            if not recorded:
                break
    for f in files:
        f.unlink(missing_ok=True)
    return found


def _processes() -> list[tuple[int, int]]:
    """(pid, process group) of every process we can see."""
    out: list[tuple[int, int]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may contain spaces and parentheses; fields resume after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2:
            out.append((int(entry.name), int(fields[2])))
    return out


def _environ_matches(pid: int, key: tuple[str, int]) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = set(f.read().split(b"\0"))
    except OSError:
        return False
    if f"TRAINYARD_JOB_ID={key[0]}".encode() not in entries:
        return False
    attempts = [e for e in entries if e.startswith(b"TRAINYARD_ATTEMPT=")]
    return not attempts or f"TRAINYARD_ATTEMPT={key[1]}".encode() in attempts
