"""Job processes die with their agent, however the agent dies.

A job runs in a process group of its own (so that the agent can stop its whole tree), which also means
nothing takes it down when the agent is killed with SIGKILL (or by the OOM killer): before this, an
unsandboxed job ran on until the next agent on the node started and reaped it, and meanwhile the
control plane had already started it again elsewhere, so it ran twice at once. (Sandboxed jobs had
bwrap's ``--die-with-parent``; this covers every job.)

``PR_SET_PDEATHSIG`` in the child is the usual answer, and the wrong one here: it needs code between
fork and exec (a ``preexec_fn`` in a process with gRPC threads can deadlock the child; it hung job
starts under concurrency), it fires when the forking *thread* exits rather than the process, and it
reaches only the direct child, not the processes the job started.

Instead the agent keeps one small sidecar per executor: a stdlib-only Python process in a session of
its own, to which the agent writes ``+PGID`` when a job's group starts and ``-PGID`` when it is gone.
The sidecar holds only the read end of that pipe. The kernel closes the agent's write end when the
agent dies for any reason, so the sidecar reads EOF, SIGKILLs every group still listed and exits. A
clean agent exit closes the pipe too, with no groups listed by then.

Backstops stay as they were: the next agent's ``reap_orphans`` and the cgroup sweep.

Run as a script (``python -I -S watchdog.py``) it is the sidecar; it must import nothing but the
standard library, so that it starts in a few tens of milliseconds without the agent's packages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import weakref

log = logging.getLogger(__name__)


class Watchdog:
    """The agent's end: tells the sidecar which process groups to kill if the agent dies.

    Started lazily on the first ``watch``; calls are cheap (one small write to a pipe) and never raise:
    a watchdog that cannot be started or reached is logged once, and the backstops remain."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._closer: weakref.finalize[[int], Watchdog] | None = None
        self._failed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def unwatch(self, pgid: int) -> None:
        if self._proc is not None:
            self._send(f"-{pgid}\n")

    def close(self) -> None:
        """Let the sidecar exit (it kills any group still listed: call once the jobs are stopped)."""
        if self._closer is not None:
            self._closer()  # closes the descriptor once, whichever of this and the GC comes first
        self._fd = -1
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(2)

    def _start(self) -> bool:
        if self._failed:
            return False
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                # Its one line on the agent's death lands in the agent's log.
                stderr=None,
                # Not in the agent's group or session: a ^C or a group kill aimed at the agent must not
                # take the watchdog down first. (Its pipe is close-on-exec: no job inherits it, or a
                # job would keep it open and the sidecar would never see the agent's end.)
                start_new_session=True,
            )
        except OSError as e:
            self._failed = True
            log.warning("cannot start the job watchdog (%s): jobs outlive a killed agent until reaped", e)
            return False
        assert self._proc.stdin is not None
        # Our own descriptor: the Popen's file object would buffer, and closing it must be ours to do.
        self._fd = os.dup(self._proc.stdin.fileno())
        os.set_inheritable(self._fd, False)
        self._proc.stdin.close()
        # Lines are far below PIPE_BUF, so each write is atomic: whole, or EAGAIN when the sidecar has
        # fallen 64 KiB behind (never block the agent's event loop on it).
        os.set_blocking(self._fd, False)
        # Dropped without close() (an executor in a test): the sidecar still sees EOF and exits.
        self._closer = weakref.finalize(self, _close_fd, self._fd)
        return True

    def _send(self, line: str) -> None:
        if self._fd < 0 and not self._start():
            return
        try:
            os.write(self._fd, line.encode())
        except OSError as e:
            if not self._failed:
                log.warning("job watchdog unreachable (%s): jobs outlive a killed agent until reaped", e)
            self._failed = True


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _serve() -> None:
    """The sidecar: track groups from stdin; on EOF (the agent is gone) kill those still listed."""
    # ^C in the agent's terminal is for the agent, which then stops its jobs with their grace.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        with contextlib.suppress(ValueError):
            if line.startswith(b"+"):
                groups.add(int(line[1:]))
            elif line.startswith(b"-"):
                groups.discard(int(line[1:]))
    killed = 0
    for pgid in groups:
        if pgid <= 1:
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    if killed:
        print(
            f"trainyard watchdog: the agent is gone; killed {killed} job process group(s)",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    _serve()
