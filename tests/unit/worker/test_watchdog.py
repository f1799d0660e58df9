"""The job watchdog: when the agent's end of its pipe closes, listed process groups die, others live."""

from __future__ import annotations

import subprocess
import time

from trainyard.worker.watchdog import Watchdog


def _group() -> subprocess.Popen[bytes]:
    # A leader with a child, as a job with a DataLoader worker: the whole group must go.
    return subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)


def _dead_within(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_listed_groups_die_when_the_agent_end_closes() -> None:
    dog = Watchdog()
    watched, released = _group(), _group()
    try:
        dog.watch(watched.pid)
        dog.watch(released.pid)
        dog.unwatch(released.pid)
        assert dog.pid is not None
        time.sleep(0.2)
        assert watched.poll() is None, "the watchdog killed a group while the agent was alive"
        dog.close()  # what the kernel does to the pipe when the agent is killed
        assert _dead_within(watched, 3), "a watched group outlived its agent"
        assert watched.returncode == -9
        assert not _dead_within(released, 0.3), "a group no longer watched was killed"
    finally:
        for p in (watched, released):
            p.kill()
            p.wait()


def test_a_dropped_watchdog_lets_its_sidecar_exit() -> None:
    dog = Watchdog()
    dog.watch(2**22 + 12345)  # no such group: nothing to kill, but the sidecar starts
    proc = dog._proc
    assert proc is not None
    del dog  # an executor dropped without close(): the finalizer closes the pipe
    proc.wait(5)
