"""The executor port: the few primitives the agent needs to run, stop and watch one attempt."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from trainyard.model.quantity import format_memory


class StartFailed(Exception):
    """The command could not be started (not found, not executable, bad working directory)."""


class InfraFailure(Exception):
    """The attempt ended because the platform under it failed, not the job: a Pod evicted from its
    node, or deleted by someone else. ``wait`` raises it; the attempt is reported as an infrastructure
    failure with this message as its reason (and retried under the infra rule)."""


@dataclass(frozen=True)
class LaunchSpec:
    """One attempt, ready to run: its directories exist and its bundle is unpacked."""

    job_id: str
    attempt: int
    command: tuple[str, ...]
    env: Mapping[str, str]
    """The assignment's environment (the spec's env, TRAINYARD_JOB_ID, TRAINYARD_ATTEMPT, ...)."""
    cwd: Path
    attempt_dir: Path
    checkpoint_dir: Path
    artifact_dir: Path
    resume_dir: Path | None = None
    """Where the checkpoint to resume from was unpacked, when resuming."""
    gpu_indices: tuple[int, ...] = ()
    cpu: float = 0.0
    memory: int = 0
    image: str = ""
    network: bool = True
    """False: the job gets no network but loopback (on workers that isolate jobs)."""
    data_cache: Path | None = None
    """The job's team's directory of the data cache (``$TRAINYARD_DATA_CACHE``), writable for it."""
    user: tuple[int, int] | None = None
    """(uid, gid) the job runs as; None: the agent's own user (an agent that is not root)."""
    lease_token: str = ""
    """The attempt's lease (its fencing token). Never shown to the job: the kubernetes executor labels
    its Pod with a hash of it."""
    max_runtime_s: float = 0.0
    """The job's max runtime (0: none). The agent enforces it itself; an executor may add a backstop."""
    secret_env: tuple[str, ...] = ()
    """Which names of ``env`` hold the team secrets of the lease: an executor that writes the
    environment into an object others may read (a Pod spec) keeps these apart."""


@dataclass(frozen=True)
class ExitStatus:
    """How the main process ended: an exit code, or the signal that killed it."""

    returncode: int | None = None
    signal: int | None = None
    oom: bool = False
    """The kernel's OOM killer killed a process of the attempt (its cgroup's memory limit was hit)."""
    memory_limit: int = 0

    @property
    def exit_code(self) -> int:
        """The shell's convention (128 + signal), so that retry rules such as ``exit:137`` match kills."""
        if self.signal is not None:
            return 128 + self.signal
        return self.returncode if self.returncode is not None else -1

    @property
    def ok(self) -> bool:
        return self.signal is None and self.returncode == 0

    def describe(self) -> str:
        """A report's reason; ``oom: ...`` when the job ran out of memory (the control plane's retry
        rule ``on: [oom]`` matches that prefix)."""
        if self.oom:
            limit = f" of {format_memory(self.memory_limit)}" if self.memory_limit > 0 else ""
            plain = ExitStatus(returncode=self.returncode, signal=self.signal).describe()
            return f"oom: out of memory, the job exceeded its memory limit{limit} ({plain})"
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                return f"killed by signal {self.signal}"
            return f"killed by signal {self.signal} ({name})"
        return f"exit code {self.returncode}"


class LogSink(Protocol):
    def write(self, stream: int, data: bytes) -> None:
        """Take bytes from stdout (1) or stderr (2) as they arrive."""


class RunHandle(Protocol):
    """A started attempt."""

    @property
    def pid(self) -> int: ...

    async def wait(self) -> ExitStatus:
        """Return once the main process exited, nothing of it is left and its output is drained."""
        ...

    async def stop(self, grace_s: float) -> None:
        """Ask everything the attempt started to stop; force it after ``grace_s``. Returns when stopped."""
        ...

    def kill(self) -> None:
        """Kill everything the attempt started, at once; does not wait."""


class Executor(Protocol):
    async def start(self, spec: LaunchSpec, sink: LogSink) -> RunHandle:
        """Start the command; raise StartFailed when it cannot start at all."""
        ...

    def reap_orphans(self, work_dir: Path) -> list[tuple[str, int]]:
        """Kill what a previous agent on this node left running; return those attempts' keys."""
        ...
