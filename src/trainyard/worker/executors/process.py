"""The process executor: each attempt is a local process group in a session of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from trainyard.worker.cgroups import AttemptCgroup, Limits, write_pid
from trainyard.worker.executors.base import ExitStatus, LaunchSpec, LogSink, StartFailed
from trainyard.worker.isolation import Isolation, IsolationMode, Plan
from trainyard.worker.sandbox import SETUP_ENV
from trainyard.worker.slots import OWNER_FILE, SLOTS_DIR, read_owner, write_owner
from trainyard.worker.watchdog import Watchdog

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
        self.plan: Plan | None = None
        self.watchdog: Watchdog | None = None
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
            if self.watchdog is not None:
                self.watchdog.unwatch(self.pgid)
        if self.plan is not None:
            status = _isolated_status(self.plan, status)
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
        plan = self._proto.plan
        if plan is not None and plan.sandboxed:
            _terminate_sandboxed(self._proto.pgid, plan)
        else:
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

    def __init__(self, isolation: Isolation | None = None, *, watchdog: bool = True) -> None:
        on = isolation is not None and isolation.mode is not IsolationMode.OFF
        self._isolation = isolation if on else None
        # Kills the jobs' process groups if the agent is killed (see worker/watchdog.py).
        self.watchdog = Watchdog() if watchdog else None
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
        env = self.environment(spec)
        argv: list[str] | tuple[str, ...] = spec.command
        executable = self._resolve(spec.command[0], env.get("PATH"))
        gate: _Gate | None = None
        child_fds: tuple[int, ...] = ()
        if self._isolation is not None:
            # Inside the sandbox a failed exec would surface as bwrap's exit code 1: check here, so that
            # a typo is a start failure (retried elsewhere under the infra rule) as it is without one.
            self._check_command(spec, env, executable)
            proto.plan = plan = self._isolation.plan(spec, list(spec.command), env)
            if plan.argv != list(spec.command):  # wrapped: by bwrap, or by the shell that enters the cgroup
                argv, executable = plan.argv, plan.argv[0]
            if plan.env_fd is not None:
                # The job's variables reach it through the descriptor, after the sandbox's setup
                # (root) has run: the setup itself gets nothing a job chose (LD_PRELOAD and the like).
                env = dict(SETUP_ENV)
                child_fds = (*child_fds, plan.env_fd)
            if plan.sandboxed and plan.cgroup is not None:
                gate = _Gate()
                argv = [argv[0], *gate.bwrap_args(), *argv[1:]]
                if plan.cgroup.manager.version == 1:
                    gate.restore = _unthrottled(plan.cgroup)
                    if gate.restore is not None:
                        argv = _self_move_then_exec(plan.cgroup, argv)
                        executable = argv[0]
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: proto,
                *argv,
                executable=executable,
                cwd=spec.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                pass_fds=(*child_fds, *(gate.child_fds() if gate is not None else ())),
            )
        except OSError as e:
            _release(proto.plan)
            raise StartFailed(_start_error(spec, e)) from e
        except ValueError as e:  # an argument with a NUL byte
            _release(proto.plan)
            raise StartFailed(f"cannot start {spec.command[0]!r}: {e}") from e
        finally:
            if gate is not None:
                gate.close_child_ends()
            if proto.plan is not None:
                proto.plan.close_env()
        if gate is not None:
            assert proto.plan is not None and proto.plan.cgroup is not None
            problem = await gate.admit(loop, transport.get_pid(), proto.plan.cgroup)
            if problem is not None:
                assert self._isolation is not None
                if self._isolation.mode is IsolationMode.REQUIRED:
                    _killpg(transport.get_pid(), signal.SIGKILL)
                    await asyncio.shield(proto.exited)
                    raise StartFailed(f"isolation required but the job cannot enter its cgroup: {problem}")
                log.warning("job %s/%d runs outside its cgroup: %s", spec.job_id, spec.attempt, problem)
        pid = transport.get_pid()
        proto.pgid = pid
        if self.watchdog is not None and not proto.exited.done():
            proto.watchdog = self.watchdog
            self.watchdog.watch(pid)
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
        found = reap_orphans(work_dir)
        if self._isolation is not None:
            # Also what left its process group (or a sandbox) but not its cgroup.
            self._isolation.sweep()
        return found

    def _check_command(self, spec: LaunchSpec, env: dict[str, str], resolved: str | None) -> None:
        if not spec.cwd.is_dir():
            raise StartFailed(f"working directory not found: {spec.cwd}")
        prog = spec.command[0]
        if os.sep in prog:
            path = os.path.join(spec.cwd, prog)  # an absolute prog stays as it is
            if not os.path.exists(path):
                raise StartFailed(f"command not found: {prog}")
            if os.path.isdir(path) or not os.access(path, os.X_OK):
                raise StartFailed(f"command not executable: {prog}")
        elif resolved is None and shutil.which(prog, path=env.get("PATH")) is None:
            raise StartFailed(f"command not found: {prog}")


def _release(plan: Plan | None) -> None:
    if plan is not None and plan.cgroup is not None:
        plan.cgroup.release()


def _self_move_then_exec(cgroup: AttemptCgroup, argv: list[str]) -> list[str]:
    """``argv`` (bwrap's) behind a shell that first moves itself into the job's cgroup (v1).

    A process that moves itself, one thread by its ``tasks`` file, is moved without the kernel's
    global lock on thread groups; moving another process (the gate writing bwrap's pids) waits for
    an RCU grace period: 5-12 ms on this VM, a third of the sandboxed spawn (issue 14). bwrap and its
    sandbox then start inside the cgroup. A move that fails is left to the gate, which sees whose
    pids are not in the cgroup and moves them itself, with its rules for what fails."""
    files = [str(d / "tasks") for d in cgroup.dirs.values()]
    moves = " ".join(f'{{ echo 0 > "${i}"; }} 2>/dev/null;' for i in range(1, len(files) + 1))
    return ["/bin/sh", "-c", f'{moves} shift {len(files)}; exec "$@"', "sh", *files, *argv]


def _unthrottled(cgroup: AttemptCgroup) -> Limits | None:
    """Lift the cgroup's CPU quota until the gate opens; the limits to restore then, or None (the
    cgroup cannot be changed: no self-move, the gate moves the sandbox as it always did).

    What runs in the cgroup before the gate opens is the shell and bwrap's own start, which used to
    run outside it: charged to a small quota (0.1 core) they threw the job's first period over it,
    and ``true`` took 37-88 ms from spawn to exit instead of 17-18. Setting the quota again refills it."""
    limits = cgroup.limits
    if limits.cpu > 0:
        try:
            cgroup.apply(replace(limits, cpu=0.0))
        except OSError:
            return None
    return limits


def _members(procs: Path) -> set[int]:
    try:
        with open(procs, encoding="ascii") as f:
            return {int(x) for x in f.read().split()}
    except (OSError, ValueError):
        return set()


class _Gate:
    """Holds a sandbox at its start until its processes are in the job's cgroup.

    bwrap reports its sandbox's first process (``--info-fd``) and then waits (``--block-fd``) before
    it runs the job: both of its processes move into the cgroup while nothing of the job runs yet, so
    everything the job starts is counted and limited from its first instruction. (A pre-exec hook
    would do it in the child, but Python code between fork and exec in a process with gRPC threads
    can deadlock or crash the child, and it rules out vfork.)"""

    def __init__(self) -> None:
        self.restore: Limits | None = None
        """The cgroup's limits, to set again before the job runs (see ``_unthrottled``)."""
        self.info_r, self.info_w = os.pipe()
        self.block_r, self.block_w = os.pipe()
        for fd in (self.info_r, self.block_w):
            os.set_inheritable(fd, False)

    def bwrap_args(self) -> list[str]:
        return ["--info-fd", str(self.info_w), "--block-fd", str(self.block_r)]

    def child_fds(self) -> tuple[int, int]:
        return (self.info_w, self.block_r)

    def close_child_ends(self) -> None:
        for fd in (self.info_w, self.block_r):
            with contextlib.suppress(OSError):
                os.close(fd)

    async def admit(
        self, loop: asyncio.AbstractEventLoop, bwrap_pid: int, cgroup: AttemptCgroup
    ) -> str | None:
        """Move the sandbox into ``cgroup`` and let the job run; what went wrong, or None."""
        problem: str | None = None
        try:
            info = await self._read_info(loop)
            pids = [bwrap_pid]
            child = info.get("child-pid") if info else None
            if isinstance(child, int):
                pids.append(child)
            for procs in cgroup.procs_files:
                inside = _members(procs)  # moved already by themselves (``_self_move_then_exec``)
                for pid in pids:
                    if pid in inside:
                        continue
                    with contextlib.suppress(ProcessLookupError):  # bwrap failed and is gone
                        write_pid(procs, pid)
        except OSError as e:
            problem = str(e)
        finally:
            # Whatever happened above (a failed move, a cancel), the quota lifted for the sandbox's
            # start is set again before the job may run: the shell may already be inside the cgroup.
            if self.restore is not None and cgroup.limits != self.restore:
                try:
                    cgroup.apply(self.restore)
                except OSError as e:
                    problem = problem or f"its CPU quota cannot be set again: {e}"
            with contextlib.suppress(OSError):
                os.write(self.block_w, b"1")
            os.close(self.block_w)
        return problem

    async def _read_info(self, loop: asyncio.AbstractEventLoop) -> dict[str, object] | None:
        done: asyncio.Future[dict[str, object] | None] = loop.create_future()
        buf = bytearray()

        def readable() -> None:
            try:
                chunk = os.read(self.info_r, 4096)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # bwrap exited before its sandbox existed: it reports why on stderr
                if not done.done():
                    done.set_result(None)
                return
            buf.extend(chunk)
            with contextlib.suppress(ValueError):
                parsed = json.loads(buf)
                if isinstance(parsed, dict) and not done.done():
                    done.set_result(parsed)

        os.set_blocking(self.info_r, False)
        loop.add_reader(self.info_r, readable)
        try:
            return await asyncio.wait_for(done, _GATE_TIMEOUT_S)
        except TimeoutError:
            log.warning("bwrap did not report its sandbox within %gs", _GATE_TIMEOUT_S)
            return None
        finally:
            loop.remove_reader(self.info_r)
            os.close(self.info_r)


_GATE_TIMEOUT_S = 10.0


def _isolated_status(plan: Plan, status: ExitStatus) -> ExitStatus:
    rc = status.returncode
    if plan.sandboxed and rc is not None and 128 < rc <= 128 + 64:
        # bwrap exits 128 + N when the job was killed by signal N: give it back its signal, as an
        # unsandboxed job would report it (the exit code, 128 + N, is the same either way).
        status = ExitStatus(signal=rc - 128)
    cg = plan.cgroup
    if cg is not None:
        if cg.oom_killed():
            status = replace(status, oom=True, memory_limit=cg.limits.memory)
        cg.kill_all()
        cg.release()
    return status


def _terminate_sandboxed(pgid: int, plan: Plan) -> None:
    """SIGTERM the job's processes but not bwrap's own (the group's leader, ``pgid``): bwrap dies of
    SIGTERM and takes the sandbox down with SIGKILL, which would leave the job no grace to checkpoint."""
    if plan.cgroup is not None:
        plan.cgroup.signal(signal.SIGTERM, exclude=(pgid,))
        return
    for pid, pgrp in _processes():
        if pgrp == pgid and pid != pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)


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
