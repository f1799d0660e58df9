"""The bubblewrap sandbox a job runs in: what it sees, what it may write, which namespaces it gets.

The job sees the node's file system read-only (its interpreters and libraries are where they are on
the node), with:

- its own PID namespace (a fresh /proc: it sees and can signal only its own processes), IPC namespace
  (System V and POSIX shared memory of its own), mount namespace, and no capabilities (it cannot
  undo any of the mounts below); no network but loopback when the job or the worker says so;
- a private, empty /tmp, /var/tmp, /run and a minimal /dev (plus exactly the job's GPUs);
- the worker's protected directories (its work directory with every attempt's files, the platform
  home with the database, tokens and credentials) replaced by empty directories;
- writable: only the job's own checkpoint, artifact and work directories, the data cache, and the
  submit directory it was started in (``cwd``: the user's own directory, Slurm's convention) unless
  that is a system directory;
- the agent's own installation read-only even when it lies inside the job's submit directory;
- an unprivileged user when the agent is root (``run_as``): bwrap keeps only the capabilities to
  change user, and ``setpriv`` gives them up together with root before it runs the job.

Pure argv construction: ``bwrap_argv`` runs nothing, so every rule is unit-testable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_DIRS: tuple[str, ...] = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt",
    "/proc",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/usr",
    "/var",
)
"""A submit directory in (or equal to) one of these, or ``/`` itself, stays read-only."""

PRIVATE_TMPFS: tuple[str, ...] = ("/tmp", "/var/tmp", "/run")
"""Empty and private per job. /run also holds the node's daemon sockets (docker.sock and the like):
a read-only mount does not stop connect(2) on a unix socket, an empty /run does."""

KEEP_IN_RUN: tuple[str, ...] = ("/run/systemd/resolve",)
"""Put back read-only over the private /run: /etc/resolv.conf points here on systemd-resolved nodes."""

GPU_SHARED_DEVICES: tuple[str, ...] = (
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
)


class SandboxRefused(Exception):
    """The job asks for something the sandbox must not grant (a working directory it must not see)."""


@dataclass(frozen=True)
class SandboxSpec:
    command: Sequence[str]
    cwd: Path
    writable: Sequence[Path]
    """The job's own directories (checkpoints, artifacts, work), the data cache."""
    readonly: Sequence[Path] = ()
    """Job inputs inside protected directories (the unpacked checkpoint it resumes from)."""
    protected: Sequence[Path] = ()
    """Hidden from the job: the worker's work directory, the platform home."""
    agent_install: Sequence[Path] = ()
    agent_visible: Sequence[Path] = ()
    """Bound back read-only where a private tmpfs hides them, before the protected directories
    (which may lie inside, e.g. a `yard up` home in the checkout) are hidden again."""
    """Read-only even where a writable directory contains them (the agent's venv and package)."""
    network: bool = True
    gpu_indices: Sequence[int] = ()
    extra_devices: Sequence[str] = field(default_factory=tuple)
    run_as: tuple[int, int] | None = None
    """(uid, gid) the job runs as; None: bwrap's own user (an agent that is not root)."""
    env_fd: int | None = None
    """A descriptor holding the job's environment (``env_script``): the sandbox's setup programs
    (bwrap, setpriv: root, with capabilities) then start with a clean one, so that a job's
    ``LD_PRELOAD`` or ``LD_LIBRARY_PATH`` reaches only the job. None: bwrap passes its own on."""
    private: Sequence[Path] = ()
    """Replaced by empty directories like /tmp: the agent's own home (root's), which may hold the
    interpreter jobs run (pyenv) but is no job's business otherwise."""
    setpriv: str = "setpriv"


def _within(path: Path, parent: Path) -> bool:
    if path == parent:
        return True
    if path.root == parent.root == "/":
        # By the text: ``in path.parents`` builds a Path per ancestor, and bwrap_argv asks a few
        # hundred times per spawn (a sandboxed plan took 3.2 ms of the agent's CPU, now 1.3 ms).
        prefix = str(parent)
        return str(path).startswith(prefix if prefix.endswith("/") else prefix + "/")
    return parent in path.parents


def _real(p: Path) -> Path:
    # bwrap mounts real paths; a symlinked work dir would otherwise be bound at the link's target
    # while the job was told the link's path.
    return Path(os.path.realpath(p))


def cwd_is_writable(cwd: Path) -> bool:
    s = str(cwd)
    return s != "/" and not any(s == d or s.startswith(d + "/") for d in SYSTEM_DIRS)


def bwrap_argv(bwrap: str, spec: SandboxSpec) -> list[str]:
    """The bwrap command line that runs ``spec.command`` in the sandbox. Later mounts win, so the
    order is: the node read-only, private dirs, the submit directory, protected dirs hidden, the
    job's own directories, the agent's installation read-only again."""
    cwd = _real(spec.cwd)
    protected = [_real(p) for p in spec.protected]
    writable = [_real(p) for p in spec.writable]
    own = [w for w in writable if _within(cwd, w)]
    for p in protected:
        if _within(cwd, p) and not own:
            raise SandboxRefused(
                f"working directory {spec.cwd} is inside the worker's protected directory {p}"
            )
    argv = [
        bwrap,
        "--die-with-parent",
        "--unshare-pid",
        "--unshare-ipc",
    ]
    if not spec.network:
        argv.append("--unshare-net")
    # No capability survives into the job: it cannot remount, unmount, ptrace the agent or load
    # modules, and bwrap sets no_new_privs. To leave root, setpriv needs three capabilities for one
    # exec; it drops them (bounding set included) with the uid change.
    argv += ["--cap-drop", "ALL"]
    if spec.run_as is not None:
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    if spec.gpu_indices:
        # Only the job's GPUs exist in its /dev: CUDA_VISIBLE_DEVICES is a hint a job can change.
        for d in (*GPU_SHARED_DEVICES, *(f"/dev/nvidia{i}" for i in spec.gpu_indices)):
            argv += ["--dev-bind-try", d, d]
    for d in spec.extra_devices:
        argv += ["--dev-bind-try", d, d]
    m = _Mounts(argv, reachable=spec.run_as is not None)
    private = [Path(d) for d in PRIVATE_TMPFS]
    for h in spec.private:
        h = _real(h)
        if str(h) != "/" and not any(_within(h, p) for p in private):
            private.append(h)
    for t in private:
        m.tmpfs(t)
    for a in spec.agent_visible:
        a = _real(a)
        if any(_within(a, d) for d in private):
            m.bind("--ro-bind", a, a)  # hidden by a private dir; protected dirs re-hide below
    for d in KEEP_IN_RUN:
        m.bind("--ro-bind-try", Path(d), Path(d))
    if not own and cwd_is_writable(cwd):
        m.bind("--bind", cwd, cwd)
    for p in protected:
        if p.is_dir():
            m.tmpfs(p)
        elif p.exists():
            m.bind("--ro-bind", Path("/dev/null"), p)
    for w in writable:
        m.bind("--bind", w, w)
    for r in spec.readonly:
        m.bind("--ro-bind", _real(r), _real(r))
    for a in spec.agent_install:
        a = _real(a)
        if any(_within(a, w) for w in [cwd, *writable]):
            m.bind("--ro-bind", a, a)
    command = list(spec.command)
    if spec.env_fd is not None:
        # Into the private /run, readable by the job's user: its own environment, nothing else.
        argv += ["--perms", "0444", "--ro-bind-data", str(spec.env_fd), ENV_FILE]
        command = ["/bin/sh", "-c", f'. {ENV_FILE} && exec "$@"', "sh", *command]
    argv += ["--chdir", str(cwd), "--"]
    if spec.run_as is not None:
        uid, gid = spec.run_as
        argv += [spec.setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        argv += ["--inh-caps=-all", "--bounding-set=-all", "--"]
    return [*argv, *command]


ENV_FILE = "/run/trainyard-env"
SETUP_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
"""All that bwrap and setpriv see of an environment when the job's comes through ``env_fd``."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_script(env: Mapping[str, str]) -> bytes:
    """The job's environment as a POSIX shell script of ``export`` lines, values single-quoted (a
    value is data, never code); names a shell cannot export are left out."""
    lines = []
    for name, value in env.items():
        if _ENV_NAME.fullmatch(name) and "\x00" not in value:
            quoted = value.replace("'", "'\\''")
            lines.append(f"export {name}='{quoted}'\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class _Mounts:
    """Adds mounts to an argv in order. With ``reachable``, the directories bwrap creates on a tmpfs
    to hold a mount point are made 0755 (bwrap makes them 0700, owned by root): a job of another
    user must be able to walk to its own directories by their absolute paths."""

    def __init__(self, argv: list[str], *, reachable: bool) -> None:
        self.argv = argv
        self.reachable = reachable
        self._tmpfs: list[Path] = []
        self._made: set[Path] = set()

    def tmpfs(self, d: Path) -> None:
        self.argv += ["--tmpfs", str(d)]
        self._tmpfs.append(d)
        self._made = {x for x in self._made if not _within(x, d)}  # covered by the new, empty tmpfs

    def bind(self, flag: str, src: Path, dest: Path) -> None:
        if self.reachable:
            self._parents(dest)
        self.argv += [flag, str(src), str(dest)]

    def _parents(self, dest: Path) -> None:
        covering = [t for t in self._tmpfs if t != dest and _within(dest, t)]
        if not covering:
            return
        top = max(covering, key=lambda t: len(t.parts))
        for anc in reversed(dest.parents):
            if anc != top and _within(anc, top) and anc not in self._made:
                self.argv += ["--perms", "0755", "--dir", str(anc)]
                self._made.add(anc)
