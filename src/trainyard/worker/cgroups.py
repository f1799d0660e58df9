"""A cgroup per attempt, sized from its resources: memory, CPU quota and pids; cgroup v1 and v2.

Layout: every controller gets ``<the agent's own cgroup>/trainyard-<worker>/j<N>``. Nesting under the
agent's own cgroup keeps jobs inside whatever the node (systemd, a container runtime) gave the agent,
and needs no write access anywhere else.

Creating a cgroup (mkdir per controller) and removing it (rmdir, which waits for the kernel to free
its state) cost a noticeable share of a trivial job's start, so finished attempts' cgroups go back to a
pool once they are empty and the next attempt takes one with fresh limits: reuse is safe because a
cgroup holds no state of a job once its processes are gone (page cache charged to it is reclaimable,
and OOM kills are counted from a baseline taken at each attempt's start).

The root directory is a parameter so that the v2 code paths run in unit tests against a fake tree.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
MAX_FREE = 64
"""Empty cgroups kept for reuse; past that a finished attempt's cgroup is removed."""


class CgroupError(Exception):
    """The cgroup tree cannot be used (not mounted, not writable, a controller missing)."""


@dataclass(frozen=True)
class Limits:
    memory: int = 0
    """Bytes; 0: unlimited."""
    cpu: float = 0.0
    """Cores, as a CFS quota; 0: unlimited."""
    pids: int = 0
    """Processes and threads; 0: unlimited."""


def _write(path: Path, value: str) -> None:
    # Kernel control files take one value per write(2). O_CREAT|O_TRUNC only matter in a fake tree
    # (unit tests): cgroupfs files always exist and ignore truncation.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def write_pid(procs: Path, pid: int) -> None:
    """Move process ``pid`` into the cgroup whose ``cgroup.procs`` this is."""
    try:
        _write(procs, str(pid))
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise ProcessLookupError(pid) from e
        raise


def _read(path: Path) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError:
        return ""


def _keyed(text: str, key: str) -> int:
    """The value of ``key`` in a flat keyed file (``memory.events``, ``memory.oom_control``)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            try:
                return int(parts[1])
            except ValueError:
                return 0
    return 0


def _pids(text: str) -> list[int]:
    return [int(p) for p in text.split() if p.isdigit()]


def own_cgroups(proc_cgroup: Path = Path("/proc/self/cgroup")) -> dict[str, str]:
    """Controller (or ``""`` for the v2 unified tree) → this process's cgroup path."""
    out: dict[str, str] = {}
    for line in _read(proc_cgroup).splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "worker"


class AttemptCgroup:
    """One job's cgroup: one directory per v1 controller, or one v2 directory."""

    def __init__(self, manager: CgroupManager, name: str, dirs: dict[str, Path]) -> None:
        self.manager = manager
        self.name = name
        self.dirs = dirs
        """Controller → directory (v2: the single directory under ``""``)."""
        self.limits = Limits()
        self._oom_baseline = 0
        self._group_oom = False

    @property
    def procs_files(self) -> list[Path]:
        """Where a process is moved in (its pid written; ``0`` moves the writer itself)."""
        return [d / "cgroup.procs" for d in self.dirs.values()]

    def apply(self, limits: Limits) -> None:
        """Set the limits (only those that changed since this cgroup's last attempt)."""
        if self.manager.version == 2:
            self._apply_v2(limits)
        else:
            self._apply_v1(limits)
        self.limits = limits
        self._oom_baseline = self.oom_kills()

    def _apply_v1(self, limits: Limits) -> None:
        mem = self.dirs.get("memory")
        if mem is not None and limits.memory != self.limits.memory:
            value = str(limits.memory) if limits.memory > 0 else "-1"
            limit, memsw = mem / "memory.limit_in_bytes", mem / "memory.memsw.limit_in_bytes"
            # memsw (memory + swap) is set equal to the limit, so that a job cannot swap its way past
            # it (it is OOM-killed instead of slowing the node down). The kernel keeps memsw >= limit
            # at every step: lowering goes limit first, raising memsw first.
            if not memsw.exists():
                _write(limit, value)
            else:
                try:
                    _write(limit, value)
                    _write(memsw, value)
                except OSError:
                    _write(memsw, value)
                    _write(limit, value)
        cpu = self.dirs.get("cpu")
        if cpu is not None and limits.cpu != self.limits.cpu:
            quota = max(1000, int(limits.cpu * CPU_PERIOD_US)) if limits.cpu > 0 else -1
            _write(cpu / "cpu.cfs_quota_us", str(quota))
        pids = self.dirs.get("pids")
        if pids is not None and limits.pids != self.limits.pids:
            _write(pids / "pids.max", str(limits.pids) if limits.pids > 0 else "max")

    def _apply_v2(self, limits: Limits) -> None:
        d = self.dirs[""]
        if limits.memory != self.limits.memory:
            _write(d / "memory.max", str(limits.memory) if limits.memory > 0 else "max")
            # No swap: past its limit a job is OOM-killed rather than swapping the node to a crawl.
            with contextlib.suppress(OSError):
                _write(d / "memory.swap.max", "0" if limits.memory > 0 else "max")
        if limits.cpu != self.limits.cpu:
            quota = str(max(1000, int(limits.cpu * CPU_PERIOD_US))) if limits.cpu > 0 else "max"
            _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        if limits.pids != self.limits.pids:
            _write(d / "pids.max", str(limits.pids) if limits.pids > 0 else "max")
        if not self._group_oom:
            self._group_oom = True
            # One OOM kill takes the whole job down, not just its largest process: a job half
            # killed (a data loader gone, the trainer waiting on it) would hang instead of failing.
            with contextlib.suppress(OSError):
                _write(d / "memory.oom.group", "1")

    def oom_kills(self) -> int:
        """The kernel's count of OOM kills in this cgroup (0 where the kernel does not count)."""
        if self.manager.version == 2:
            return _keyed(_read(self.dirs[""] / "memory.events"), "oom_kill")
        mem = self.dirs.get("memory")
        return _keyed(_read(mem / "memory.oom_control"), "oom_kill") if mem is not None else 0

    def oom_killed(self) -> bool:
        """Whether the OOM killer killed a process of this attempt (since ``apply``)."""
        return self.oom_kills() > self._oom_baseline

    def processes(self) -> list[int]:
        first = next(iter(self.dirs.values()))
        return _pids(_read(first / "cgroup.procs"))

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup, including ones that left the job's process group."""
        if self.manager.version == 2:
            kill_file = self.dirs[""] / "cgroup.kill"
            if self.manager.has_kill_file:
                try:
                    _write(kill_file, "1")
                    return
                except OSError:
                    pass
        for _ in range(3):  # a process may fork while we read the list
            pids = self.processes()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def signal(self, sig: int, exclude: Iterable[int] = ()) -> None:
        skip = set(exclude)
        for pid in self.processes():
            if pid not in skip:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)

    def release(self) -> None:
        self.manager.release(self)

    def remove(self) -> bool:
        ok = True
        for d in self.dirs.values():
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.ENOENT:
                    ok = False
        return ok


class CgroupManager:
    """The worker's cgroups: creates, pools and sweeps the per-attempt ones. Event-loop bound."""

    def __init__(self, version: int, bases: dict[str, Path], v2_controllers: tuple[str, ...] = ()) -> None:
        self.version = version
        self._v2_controllers = v2_controllers
        self.bases = bases
        """Controller → this worker's parent directory (v2: one directory under ``""``)."""
        self._free: list[AttemptCgroup] = []
        self._dirty: list[AttemptCgroup] = []
        self._count = 0
        self.has_kill_file = version == 2 and any((b / "cgroup.kill").exists() for b in bases.values())

    @property
    def controllers(self) -> tuple[str, ...]:
        return self._v2_controllers if self.version == 2 else tuple(sorted(self.bases))

    @classmethod
    def detect(
        cls,
        worker: str,
        *,
        root: Path = CGROUP_ROOT,
        proc_cgroup: Path = Path("/proc/self/cgroup"),
    ) -> tuple[CgroupManager | None, list[str]]:
        """The manager, or None, and what is missing (one line per missing controller or problem)."""
        own = own_cgroups(proc_cgroup)
        name = f"trainyard-{_safe_name(worker)}"
        if (root / "cgroup.controllers").exists():
            return cls._detect_v2(root, own.get("", "/"), name)
        missing: list[str] = []
        bases: dict[str, Path] = {}
        for c in V1_CONTROLLERS:
            mount = root / c
            if not (mount / "cgroup.procs").exists():
                missing.append(f"cgroup v1 controller {c!r} is not mounted at {mount}")
                continue
            base = mount / own.get(c, "/").lstrip("/") / name
            try:
                base.mkdir(exist_ok=True)
            except OSError as e:
                missing.append(f"cannot create {base}: {e.strerror}")
                continue
            if c == "memory":
                # Limits and OOM counts must cover the job's children too.
                with contextlib.suppress(OSError):
                    _write(base / "memory.use_hierarchy", "1")
            bases[c] = base
        if not bases:
            return None, missing or ["no cgroup controllers found"]
        return cls(1, bases), missing

    @classmethod
    def _detect_v2(cls, root: Path, own: str, name: str) -> tuple[CgroupManager | None, list[str]]:
        parent = root / own.lstrip("/")
        wanted = {"memory", "cpu", "pids"}
        available = set(_read(parent / "cgroup.controllers").split())
        missing = [
            f"cgroup v2 controller {c!r} is not available in {parent}" for c in sorted(wanted - available)
        ]
        usable = sorted(wanted & available)
        if not usable:
            return None, missing
        enable = " ".join(f"+{c}" for c in usable)
        base = parent / name
        try:
            try:
                _write(parent / "cgroup.subtree_control", enable)
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                # "No internal processes": a cgroup holding processes (the agent) cannot hand
                # controllers to children. Move the agent into a leaf of its own, as systemd's
                # delegated services do, then enable them.
                leaf = parent / "trainyard-agent"
                leaf.mkdir(exist_ok=True)
                for pid in _pids(_read(parent / "cgroup.procs")):
                    with contextlib.suppress(OSError):
                        _write(leaf / "cgroup.procs", str(pid))
                _write(parent / "cgroup.subtree_control", enable)
            base.mkdir(exist_ok=True)
            _write(base / "cgroup.subtree_control", enable)
        except OSError as e:
            return None, [*missing, f"cannot set up cgroup v2 under {parent}: {e.strerror or e}"]
        return cls(2, {"": base}, tuple(usable)), missing

    def sweep(self) -> int:
        """Kill what a previous agent's attempts left in this worker's cgroups and remove them.
        Returns how many processes were killed."""
        killed = 0
        seen: set[str] = set()
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                seen.update(e.name for e in os.scandir(base) if e.is_dir())
        for name in sorted(seen):
            dirs = {c: b / name for c, b in self.bases.items() if (b / name).is_dir()}
            cg = AttemptCgroup(self, name, dirs)
            pids = cg.processes()
            killed += len(pids)
            if pids:
                log.warning("killing %d process(es) left in cgroup %s by an earlier agent", len(pids), name)
                cg.kill_all()
            deadline = time.monotonic() + 5.0
            while not cg.remove() and time.monotonic() < deadline:
                cg.kill_all()
                time.sleep(0.02)
        self._free.clear()
        self._dirty.clear()
        return killed

    def acquire(self, limits: Limits) -> AttemptCgroup:
        """A cgroup with these limits and no processes; raises CgroupError when none can be made."""
        self._retry_dirty()
        cg = self._free.pop() if self._free else self._create()
        try:
            cg.apply(limits)
        except OSError as e:
            self._discard(cg)
            raise CgroupError(f"cannot set limits on cgroup {cg.name}: {e.strerror or e}") from e
        return cg

    def _create(self) -> AttemptCgroup:
        self._count += 1
        name = f"j{os.getpid()}-{self._count}"
        dirs: dict[str, Path] = {}
        try:
            for c, base in self.bases.items():
                d = base / name
                d.mkdir()
                dirs[c] = d
        except OSError as e:
            AttemptCgroup(self, name, dirs).remove()
            raise CgroupError(f"cannot create cgroup {name}: {e.strerror or e}") from e
        return AttemptCgroup(self, name, dirs)

    def release(self, cg: AttemptCgroup) -> None:
        """Back to the pool once empty; a cgroup whose processes are still dying waits in a list."""
        if cg.processes():
            cg.kill_all()
            self._dirty.append(cg)
            return
        self._put_back(cg)

    def _put_back(self, cg: AttemptCgroup) -> None:
        if len(self._free) < MAX_FREE:
            self._free.append(cg)
        else:
            self._discard(cg)

    def _discard(self, cg: AttemptCgroup) -> None:
        if not cg.remove():
            log.warning("cannot remove cgroup %s", cg.name)

    def _retry_dirty(self) -> None:
        if not self._dirty:
            return
        still: list[AttemptCgroup] = []
        for cg in self._dirty:
            if cg.processes():
                cg.kill_all()
                still.append(cg)
            else:
                self._put_back(cg)
        self._dirty = still
