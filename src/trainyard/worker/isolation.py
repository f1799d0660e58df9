"""Job isolation policy: what the node can enforce, and what to do about what it cannot.

``required`` refuses to start a job it cannot fully isolate (the attempt fails to start with the
reason, so the control plane places it elsewhere under the infra retry rule); ``best-effort`` runs it
with whatever the node offers and says once per missing feature, as a warning, what it could not
apply; ``off`` runs jobs as plain process groups, as before isolation existed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import trainyard
from trainyard.model.quantity import format_memory
from trainyard.worker.cgroups import CGROUP_ROOT, AttemptCgroup, CgroupError, CgroupManager, Limits
from trainyard.worker.executors.base import LaunchSpec, StartFailed
from trainyard.worker.sandbox import SandboxRefused, SandboxSpec, bwrap_argv, env_script

if TYPE_CHECKING:
    from trainyard.worker.config import WorkerConfig

log = logging.getLogger(__name__)

DEFAULT_PIDS_LIMIT = 4096
"""Processes and threads per job: far above what training needs (a DataLoader with 32 workers and
their threads is a few hundred), far below what takes a node down."""


class IsolationMode(StrEnum):
    REQUIRED = "required"
    BEST_EFFORT = "best-effort"
    OFF = "off"


@dataclass(frozen=True)
class IsolationSettings:
    mode: IsolationMode = IsolationMode.BEST_EFFORT
    worker: str = "worker"
    """Names this worker's cgroup parent (``trainyard-<worker>``)."""
    protected: tuple[Path, ...] = ()
    """Hidden from jobs: the work directory, the platform home (database, tokens, credentials)."""
    data_cache: Path | None = None
    """The data cache's root: hidden from jobs, which each get their team's directory of it."""
    pids_limit: int = DEFAULT_PIDS_LIMIT
    network: bool = True
    """The worker's (pool's) rule: False gives no job on this worker a network but loopback."""
    bwrap: str | None = None
    """bwrap's path; None: found on PATH."""
    cgroup_root: Path = CGROUP_ROOT
    proc_cgroup: Path = Path("/proc/self/cgroup")


@dataclass
class Plan:
    """How one attempt runs: its argv (the sandbox's, or the command itself) and its cgroup."""

    argv: list[str]
    cgroup: AttemptCgroup | None
    sandboxed: bool
    env_fd: int | None = None
    """Holds the job's environment for the sandbox (see ``SandboxSpec.env_fd``): pass it to the
    child, spawn with ``SETUP_ENV``, close it once spawned."""

    def close_env(self) -> None:
        if self.env_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.env_fd)
            self.env_fd = None


def _agent_install() -> tuple[Path, ...]:
    # A job started in the agent's own checkout (the submit directory of a developer's `yard up`)
    # must not rewrite the code the next agent runs.
    return (Path(sys.prefix), Path(trainyard.__file__).resolve().parent)


def _agent_home() -> tuple[Path, ...]:
    home = Path(os.path.expanduser("~"))
    return (home,) if home.is_absolute() and str(home) not in ("/", "/nonexistent") else ()


def _agent_visible() -> tuple[Path, ...]:
    """What jobs must see of the agent's installation even where the sandbox's private /tmp would
    hide it (a checkout in /tmp, as CI clones often are): its interpreter environment, and its
    source checkout as a whole when it runs from one (jobs run the examples and tests there)."""
    package = Path(trainyard.__file__).resolve().parent
    checkout = package.parent.parent
    # The interpreter itself too: a venv's python is a link into its base installation (pyenv's
    # lives in root's home, which jobs of another user do not see).
    interpreter = [Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent]
    # An installation in the agent's home (pyenv, conda) as a whole: its shims and tools too, so that
    # `python` on the job's PATH works for the job's user as it does for the agent.
    for home in _agent_home():
        for p in list(interpreter):
            if p != home and home in p.parents:
                interpreter.append(home / p.relative_to(home).parts[0])
    interpreter = sorted(dict.fromkeys(interpreter), key=lambda p: len(p.parts))  # parents first
    if package.parent.name == "src" and (checkout / "pyproject.toml").is_file():
        return (*interpreter, checkout)
    return (*interpreter, package)


class Isolation:
    """Probes the node once, then plans each attempt. Event-loop bound (the cgroup pool is)."""

    def __init__(self, settings: IsolationSettings) -> None:
        self.settings = settings
        self.mode = settings.mode
        self._warned: set[str] = set()
        self.bwrap = settings.bwrap or shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")
        self.sandbox_problem: str | None = None
        self.netns_problem: str | None = None
        self.cgroups: CgroupManager | None = None
        self.cgroup_problems: list[str] = []
        if self.mode is IsolationMode.OFF:
            return
        self._probe_sandbox()
        self.cgroups, self.cgroup_problems = CgroupManager.detect(
            settings.worker, root=settings.cgroup_root, proc_cgroup=settings.proc_cgroup
        )
        log.info("job isolation %s: %s", self.mode.value, self.describe())
        if self.mode is IsolationMode.REQUIRED:
            for problem in self.problems():
                log.error("isolation required, but %s: jobs that need it will be refused", problem)

    def _probe_sandbox(self) -> None:
        if self.bwrap is None:
            self.sandbox_problem = "bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap)"
            return
        base = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--cap-drop", "ALL", "--ro-bind", "/", "/"]
        base += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        err = _run_probe([*base, "--unshare-net", "--", "true"])
        if err is None:
            return
        if _run_probe([*base, "--", "true"]) is None:
            self.netns_problem = f"no network namespace: {err}"
            return
        self.sandbox_problem = f"bwrap cannot create a sandbox here: {err}"

    def problems(self) -> list[str]:
        out = [p for p in (self.sandbox_problem, self.netns_problem) if p]
        return out + self.cgroup_problems

    def describe(self) -> str:
        parts = ["sandbox " + ("off" if self.sandbox_problem else f"bwrap ({self.bwrap})")]
        if self.cgroups is not None:
            parts.append(f"cgroup v{self.cgroups.version} ({', '.join(self.cgroups.controllers)})")
        else:
            parts.append("no cgroups")
        problems = self.problems()
        if problems:
            parts.append("missing: " + "; ".join(problems))
        return ", ".join(parts)

    def sweep(self) -> int:
        """At start-up: kill what an earlier agent's jobs left in this worker's cgroups."""
        return self.cgroups.sweep() if self.cgroups is not None else 0

    def _lacking(self, feature: str, why: str) -> None:
        """A feature this job should have and cannot: refuse (required) or warn once (best-effort)."""
        if self.mode is IsolationMode.REQUIRED:
            raise StartFailed(f"isolation required but this worker cannot apply {feature}: {why}")
        if feature not in self._warned:
            self._warned.add(feature)
            log.warning(
                "ISOLATION (best-effort): cannot apply %s: %s; jobs on this worker run without it",
                feature,
                why,
            )

    def plan(self, spec: LaunchSpec, command: list[str], env: Mapping[str, str] | None = None) -> Plan:
        """Decide how ``spec`` runs; raises StartFailed when it must not run here. With ``env`` (the
        job's environment), a sandboxed plan carries it in a descriptor (``Plan.env_fd``)."""
        s = self.settings
        env_fd: int | None = None
        network = spec.network and s.network
        sandboxed = False
        argv = command
        if self.sandbox_problem is not None:
            self._lacking(
                "the sandbox (own PID, mount and IPC namespaces, hidden platform files)", self.sandbox_problem
            )
        elif not network and self.netns_problem is not None:
            self._lacking("network isolation", self.netns_problem)
        else:
            assert self.bwrap is not None
            writable = [spec.checkpoint_dir, spec.artifact_dir, spec.attempt_dir / "work"]
            if spec.data_cache is not None:
                writable.append(spec.data_cache)
            run_as = spec.user
            if run_as is not None and self.setpriv is None:
                self._lacking("an unprivileged user for jobs", "setpriv (util-linux) is not installed")
                run_as = None
            if env is not None:
                env_fd = _memfd(env_script(env))
            hidden = [*s.protected, spec.attempt_dir.parent]
            if s.data_cache is not None:
                hidden.append(s.data_cache)  # other teams' datasets
            try:
                argv = bwrap_argv(
                    self.bwrap,
                    SandboxSpec(
                        command=command,
                        cwd=spec.cwd,
                        writable=[w for w in writable if w.is_dir()],
                        readonly=[spec.resume_dir] if spec.resume_dir is not None else [],
                        protected=hidden,
                        agent_install=_agent_install(),
                        agent_visible=_agent_visible(),
                        network=network,
                        gpu_indices=spec.gpu_indices,
                        run_as=run_as,
                        setpriv=self.setpriv or "setpriv",
                        private=_agent_home() if run_as is not None else (),
                        env_fd=env_fd,
                    ),
                )
            except SandboxRefused as e:
                if env_fd is not None:
                    os.close(env_fd)
                raise StartFailed(str(e)) from e
            sandboxed = True
        if not sandboxed and spec.user is not None:
            why = "it needs the sandbox; jobs run as the agent's user"
            self._lacking("an unprivileged user for jobs", why)
        cgroup = self._cgroup(spec)
        if cgroup is not None and not sandboxed:
            argv = _enter_then_exec(cgroup.procs_files, command)
        return Plan(argv=argv, cgroup=cgroup, sandboxed=sandboxed, env_fd=env_fd)

    def _cgroup(self, spec: LaunchSpec) -> AttemptCgroup | None:
        limits = Limits(
            memory=max(0, spec.memory), cpu=max(0.0, spec.cpu), pids=max(0, self.settings.pids_limit)
        )
        if self.cgroups is None:
            self._lacking("resource limits (cgroups)", "; ".join(self.cgroup_problems))
            return None
        have = set(self.cgroups.controllers)
        for controller, needed in (("memory", limits.memory), ("cpu", limits.cpu), ("pids", limits.pids)):
            if needed and controller not in have:
                what = {
                    "memory": f"the memory limit ({format_memory(limits.memory)})",
                    "cpu": f"the CPU quota ({limits.cpu:g} cores)",
                    "pids": f"the pids limit ({limits.pids})",
                }[controller]
                self._lacking(what, f"the {controller} cgroup controller is not available")
        try:
            return self.cgroups.acquire(limits)
        except CgroupError as e:
            self._lacking("resource limits (cgroups)", str(e))
            return None


def isolation_for(cfg: WorkerConfig) -> Isolation | None:
    """The agent's isolation from its settings; None when off."""
    if cfg.isolation is IsolationMode.OFF:
        return None
    return Isolation(
        IsolationSettings(
            mode=cfg.isolation,
            # The work dir in the name too: two agents of one name on a node (test platforms side by side)
            # must not sweep each other's jobs at start-up; a restarted agent finds its own again.
            worker=f"{cfg.name}-{hashlib.sha256(str(cfg.work_dir).encode()).hexdigest()[:8]}",
            protected=(cfg.work_dir, *cfg.protected_dirs),
            data_cache=cfg.data_cache,
            pids_limit=cfg.job_pids_limit,
            network=cfg.job_network,
        )
    )


def _enter_then_exec(procs_files: list[Path], command: list[str]) -> list[str]:
    """Without the sandbox (whose start can be held, see the process executor's gate): a shell that
    moves itself into the cgroup and then becomes the job, so nothing of the job runs outside it."""
    n = len(procs_files)
    moves = " && ".join(f'echo 0 > "${i}"' for i in range(1, n + 1))
    return [
        "/bin/sh",
        "-c",
        f'{moves} || exit 125; shift {n}; exec "$@"',
        "sh",
        *map(str, procs_files),
        *command,
    ]


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("trainyard-env", os.MFD_CLOEXEC)
    try:
        os.write(fd, data) if len(data) < 65536 else _write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _run_probe(argv: list[str]) -> str | None:
    """None when the command ran; else what went wrong, from bwrap's stderr."""
    try:
        r = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if r.returncode == 0:
        return None
    return r.stderr.decode(errors="replace").strip() or f"exit code {r.returncode}"
