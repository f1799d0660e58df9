"""The process executor: output capture, stop semantics, start failures, environment."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import textwrap
from pathlib import Path

import pytest

from trainyard.worker.executors.base import StartFailed
from trainyard.worker.executors.process import PGID_FILE, ProcessExecutor
from trainyard.worker.spool import STDERR_TAIL_BYTES

from .helpers import PY, alive, kill_quietly, launch_spec, start, wait_for_output, wait_gone

pytestmark = pytest.mark.timeout(60)


def test_binary_output_is_captured_byte_exact(tmp_path: Path) -> None:
    rng = random.Random(7)
    payload = bytes(rng.getrandbits(8) for _ in range(300_000))
    (tmp_path / "payload").write_bytes(payload)
    # Odd-sized raw writes: partial lines, split multi-byte sequences and invalid UTF-8 all pass through.
    script = textwrap.dedent(
        f"""
        import os, random
        data = open({str(tmp_path / "payload")!r}, "rb").read()
        rng = random.Random(1)
        i = 0
        while i < len(data):
            n = rng.randint(1, 9000)
            os.write(1, data[i:i + n])
            i += n
        """
    )

    async def main() -> None:
        handle, spool = await start(launch_spec(tmp_path, [PY, "-c", script]))
        status = await handle.wait()
        assert status.ok, spool.read(0, spool.size)[-500:]
        assert spool.size == len(payload)
        assert (spool.path).read_bytes() == payload
        assert not spool.truncated

    asyncio.run(main())


def test_stdout_and_stderr_interleave_in_arrival_order(tmp_path: Path) -> None:
    # Each write waits for the previous one to have reached the log, so arrival order is defined.
    script = textwrap.dedent(
        """
        import os, sys
        log = sys.argv[1]
        parts = [(1, b"out-partial "), (2, b"err \\xff\\xfe\\n"), (1, b"line end\\n"), (2, b"\\xc3"), (1, b"no newline")]
        expected = b""
        for fd, data in parts:
            os.write(fd, data)
            expected += data
            while True:
                try:
                    if open(log, "rb").read() == expected:
                        break
                except FileNotFoundError:
                    pass
        """
    )

    async def main() -> None:
        spec = launch_spec(tmp_path, [PY, "-c", script, str(tmp_path / "jobs/job1/1/log")])
        handle, spool = await start(spec)
        status = await handle.wait()
        assert status.ok
        assert spool.path.read_bytes() == b"out-partial err \xff\xfe\nline end\n\xc3no newline"
        assert spool.stderr_tail == b"err \xff\xfe\n\xc3"

    asyncio.run(main())


def test_stderr_tail_keeps_the_last_bytes(tmp_path: Path) -> None:
    script = "import os\nfor i in range(2000): os.write(2, b'%05d\\n' % i)"

    async def main() -> None:
        handle, spool = await start(launch_spec(tmp_path, [PY, "-c", script]))
        await handle.wait()
        tail = spool.stderr_tail
        assert len(tail) == STDERR_TAIL_BYTES
        assert tail.endswith(b"01999\n")
        assert spool.path.read_bytes().endswith(tail)

    asyncio.run(main())


def test_spool_cap_writes_marker_once_and_keeps_draining(tmp_path: Path) -> None:
    cap = 10_000
    # 2 MB through a 64 KiB pipe: the job would block for good if we stopped reading at the cap.
    script = "import sys\nfor i in range(20000): sys.stdout.write('%099d\\n' % i)\nsys.stderr.write('done')"

    async def main() -> None:
        handle, spool = await start(launch_spec(tmp_path, [PY, "-c", script]), max_log_bytes=cap)
        status = await asyncio.wait_for(handle.wait(), 30)
        assert status.ok
        data = spool.path.read_bytes()
        marker = f"\n[trainyard: log truncated at {cap} bytes]\n".encode()
        assert data[:cap] == b"".join(b"%099d\n" % i for i in range(cap // 100 + 1))[:cap]
        assert data[cap:] == marker
        assert spool.size == len(data)
        assert spool.truncated
        assert spool.received == 20000 * 100 + 4
        assert spool.stderr_tail == b"done"

    asyncio.run(main())


def test_exit_code_and_signal_are_reported(tmp_path: Path) -> None:
    async def main() -> None:
        handle, _ = await start(launch_spec(tmp_path, [PY, "-c", "raise SystemExit(3)"]))
        status = await handle.wait()
        assert (status.returncode, status.signal, status.exit_code) == (3, None, 3)
        assert status.describe() == "exit code 3"

        handle, _ = await start(launch_spec(tmp_path, [PY, "-c", "import os; os.kill(os.getpid(), 9)"]))
        status = await handle.wait()
        assert (status.signal, status.exit_code) == (9, 137)
        assert status.describe() == "killed by signal 9 (SIGKILL)"

    asyncio.run(main())


STUBBORN = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    def on_term(*_):
        os.write(1, b"got SIGTERM\\n")
    signal.signal(signal.SIGTERM, on_term)
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child up', flush=True); time.sleep(600)"])
    open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
    while True:
        time.sleep(0.05)
    """
)


def test_stop_sigterms_the_group_then_sigkills_after_grace(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"

    async def main() -> None:
        spec = launch_spec(tmp_path, [PY, "-c", STUBBORN, str(pids_file)])
        handle, spool = await start(spec)
        # The slot's owner record: process group, job, attempt (what a restarted agent reaps).
        assert (spec.attempt_dir / PGID_FILE).read_text().split() == [str(handle.pid), "job1", "1"]
        await wait_for_output(spool, b"child up")
        main_pid, child_pid = map(int, pids_file.read_text().split())
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await handle.stop(0.5)
            elapsed = loop.time() - t0
            status = await handle.wait()
        finally:
            kill_quietly(main_pid)
            kill_quietly(child_pid)
        assert status.signal == signal.SIGKILL
        assert 0.5 <= elapsed < 5
        assert b"got SIGTERM" in spool.path.read_bytes()
        assert wait_gone(main_pid) and wait_gone(child_pid)

    asyncio.run(main())


def test_stop_returns_early_when_the_job_exits_on_sigterm(tmp_path: Path) -> None:
    async def main() -> None:
        handle, spool = await start(
            launch_spec(tmp_path, [PY, "-c", "import time; print('up', flush=True); time.sleep(600)"])
        )
        await wait_for_output(spool, b"up")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await handle.stop(30)
        assert loop.time() - t0 < 5
        assert (await handle.wait()).signal == signal.SIGTERM

    asyncio.run(main())


def test_leftovers_of_the_group_are_killed_when_the_main_process_exits(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import subprocess, sys
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(p.pid)
        """
    )

    async def main() -> None:
        handle, spool = await start(launch_spec(tmp_path, [PY, "-c", script]))
        status = await asyncio.wait_for(handle.wait(), 10)
        grandchild = int(spool.path.read_bytes())
        try:
            assert status.ok
            assert wait_gone(grandchild)
        finally:
            kill_quietly(grandchild)

    asyncio.run(main())


def test_a_grandchild_holding_the_pipes_does_not_hang_wait(tmp_path: Path) -> None:
    # The grandchild inherits stdout: the log only ends when it is gone, which the group kill ensures.
    script = (
        "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])"
    )

    async def main() -> None:
        handle, _ = await start(launch_spec(tmp_path, [PY, "-c", script]))
        status = await asyncio.wait_for(handle.wait(), 4)
        assert status.ok

    asyncio.run(main())


def test_missing_command_fails_to_start(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(StartFailed, match="command not found: no-such-command-xyz"):
            await start(launch_spec(tmp_path, ["no-such-command-xyz", "--flag"]))

        script = tmp_path / "script.sh"
        script.write_text("#!/bin/sh\necho hi\n")
        script.chmod(0o644)
        with pytest.raises(StartFailed, match="command not executable"):
            await start(launch_spec(tmp_path, [str(script)]))

    asyncio.run(main())


def test_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv("TRAINYARD_WORKER_TOKEN", "secret")
    monkeypatch.setenv("AGENT_ONLY", "inherited")
    dump = "import json, os; print(json.dumps(dict(os.environ)))"

    async def run_env(**kw: object) -> dict[str, str]:
        spec = launch_spec(tmp_path, [PY, "-c", dump], **kw)  # type: ignore[arg-type]
        handle, spool = await start(spec)
        assert (await handle.wait()).ok
        env: dict[str, str] = json.loads(spool.path.read_bytes())
        spool.path.unlink()
        return env

    async def main() -> None:
        cpu = await run_env(env={"LR": "0.1"})
        adir = tmp_path / "jobs/job1/1"
        assert cpu["CUDA_VISIBLE_DEVICES"] == ""
        assert cpu["LR"] == "0.1"
        assert cpu["AGENT_ONLY"] == "inherited"
        assert cpu["PYTHONUNBUFFERED"] == "1"
        assert cpu["TRAINYARD_JOB_ID"] == "job1" and cpu["TRAINYARD_ATTEMPT"] == "1"
        assert cpu["TRAINYARD_CHECKPOINT_DIR"] == str(adir / "checkpoints")
        assert cpu["TRAINYARD_ARTIFACT_DIR"] == str(adir / "artifacts")
        assert "TRAINYARD_RESUME_FROM" not in cpu
        assert "TRAINYARD_WORKER_TOKEN" not in cpu
        gpu = await run_env(gpus=[1, 3])
        assert gpu["CUDA_VISIBLE_DEVICES"] == "1,3"

    asyncio.run(main())


def test_resume_dir_is_exported(tmp_path: Path) -> None:
    spec = launch_spec(tmp_path, ["true"])
    resume = tmp_path / "resume"
    env = ProcessExecutor().environment(
        type(spec)(**{**spec.__dict__, "resume_dir": resume})  # frozen dataclass: rebuild with resume_dir
    )
    assert env["TRAINYARD_RESUME_FROM"] == str(resume)


def test_the_job_runs_in_its_working_directory(tmp_path: Path) -> None:
    async def main() -> None:
        spec = launch_spec(tmp_path, [PY, "-c", "import os; print(os.getcwd(), end='')"])
        handle, spool = await start(spec)
        await handle.wait()
        assert spool.path.read_text() == str(spec.cwd)
        assert alive(os.getpid())

    asyncio.run(main())
