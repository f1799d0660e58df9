"""The sim executor: the YARD_SIM grammar, and a simulated process's life (exit, OOM, stop, kill,
checkpoints, artifacts, resume)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from trainyard.worker.executors.base import LaunchSpec, StartFailed
from trainyard.worker.executors.sim import (
    ARTIFACT_FILE,
    CHECKPOINT_FILE,
    ENV,
    SimBehaviour,
    SimExecutor,
    SimHandle,
    SimSyntaxError,
    parse_sim,
    resumed_progress,
)
from trainyard.worker.slots import AttemptSlots
from trainyard.worker.spool import LogSpool

from .helpers import launch_spec

pytestmark = pytest.mark.timeout(60)


# -- the grammar ---------------------------------------------------------------------------------


def test_an_empty_behaviour_is_the_default() -> None:
    assert parse_sim("") == SimBehaviour()
    assert parse_sim(" , ") == SimBehaviour()


def test_every_key_parses() -> None:
    b = parse_sim(
        "duration=1m30s, exit=3,fail=0.25,log_rate=120/m,line_bytes=100,stderr=0.5,"
        "checkpoint_every=10s,checkpoint_bytes=4k,artifact_bytes=1Ki,oom_after=500ms,"
        "on_term=ignore,term_delay=2s"
    )
    assert b == SimBehaviour(
        duration=(90.0, 90.0),
        exit=3,
        fail=0.25,
        log_rate=2.0,
        line_bytes=100,
        stderr=0.5,
        checkpoint_every=10.0,
        checkpoint_bytes=4000,
        artifact_bytes=1024,
        oom_after=0.5,
        on_term="ignore",
        term_delay=2.0,
    )


def test_rates_and_plain_numbers() -> None:
    assert parse_sim("log_rate=10").log_rate == 10.0
    assert parse_sim("log_rate=10/s").log_rate == 10.0
    assert parse_sim("log_rate=36/h").log_rate == pytest.approx(0.01)
    assert parse_sim("log_rate=0").log_rate == 0.0
    assert parse_sim("duration=2.5").duration == (2.5, 2.5)


def test_keys_not_given_keep_the_base() -> None:
    base = parse_sim("duration=5s,log_rate=0")
    b = parse_sim("exit=2", base)
    assert (b.duration, b.log_rate, b.exit) == ((5.0, 5.0), 0.0, 2)


def test_a_duration_range_draws_one_per_job_the_same_for_every_attempt() -> None:
    b = parse_sim("duration=10s..2m")
    assert b.duration == (10.0, 120.0)
    drawn = [b.duration_for(f"j{i}") for i in range(200)]
    assert all(10.0 <= d <= 120.0 for d in drawn)
    assert len(set(drawn)) > 150
    assert b.duration_for("j7") == b.duration_for("j7")


def test_fail_is_drawn_per_attempt() -> None:
    b = parse_sim("fail=0.5")
    outcomes = [b.fails("job", attempt) for attempt in range(1, 201)]
    assert 60 < sum(outcomes) < 140
    assert outcomes == [b.fails("job", attempt) for attempt in range(1, 201)]
    assert not any(parse_sim("fail=0").fails("job", a) for a in range(50))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("duration", "must be key=value"),
        ("duration=", "must be key=value"),
        ("speed=3", "unknown key 'speed'"),
        ("duration=fast", "duration:"),
        ("duration=2m..1m", "ends before it starts"),
        ("exit=256", "exit code"),
        ("exit=-1", "exit code"),
        ("exit=x", "exit code"),
        ("fail=1.5", "between 0 and 1"),
        ("stderr=x", "between 0 and 1"),
        ("log_rate=fast", "10/s"),
        ("log_rate=3/d", "10/s"),
        ("log_rate=-1", "between 0 and"),
        ("line_bytes=0", "at least 1"),
        ("artifact_bytes=1Gi", "at most 64Mi"),
        ("checkpoint_every=10ms", "at least"),
        ("on_term=explode", "checkpoint or ignore"),
        ("exit=1,exit=2", "given twice"),
    ],
)
def test_bad_behaviours_say_which_key(text: str, needle: str) -> None:
    with pytest.raises(SimSyntaxError, match=needle.replace("(", r"\(")):
        parse_sim(text)


# -- a simulated process ---------------------------------------------------------------------------


def _spec(tmp_path: Path, sim: str | None, **kw: object) -> LaunchSpec:
    env = {ENV: sim} if sim is not None else {}
    return launch_spec(tmp_path, ["train.py"], env=env, **kw)  # type: ignore[arg-type]


async def _start(spec: LaunchSpec, executor: SimExecutor | None = None) -> tuple[SimHandle, LogSpool]:
    spool = LogSpool(spec.attempt_dir / "log", 1 << 20)
    handle = await (executor or SimExecutor()).start(spec, spool)
    return handle, spool


def test_it_ends_by_itself_with_its_exit_code_lines_and_an_artifact(tmp_path: Path) -> None:
    async def main() -> None:
        spec = _spec(tmp_path, "duration=0.6s,exit=3,log_rate=20/s,line_bytes=40,artifact_bytes=300")
        t0 = time.monotonic()
        handle, spool = await _start(spec)
        status = await asyncio.wait_for(handle.wait(), 10)
        took = time.monotonic() - t0
        assert status.returncode == 3 and status.signal is None and not status.oom
        assert 0.55 <= took < 2.0
        lines = spool.read(0, spool.size).splitlines()
        steps = [ln for ln in lines if ln.startswith(b"sim step=")]
        assert len(steps) == 12  # 0.6 s at 20 lines a second
        assert all(len(ln) == 39 for ln in steps)  # 40 bytes with the newline
        assert b"exit 3" in spool.stderr_tail
        artifact = spec.artifact_dir / ARTIFACT_FILE
        assert artifact.stat().st_size == 300
        assert json.loads(artifact.read_bytes().split(b"\n")[0])["exit"] == 3

    asyncio.run(main())


def test_a_job_without_a_behaviour_gets_the_default_and_a_command_may_carry_one(tmp_path: Path) -> None:
    async def main() -> None:
        executor = SimExecutor(parse_sim("duration=0.1s,exit=4,log_rate=0"))
        handle, _ = await _start(_spec(tmp_path, None), executor)
        assert (await asyncio.wait_for(handle.wait(), 10)).returncode == 4
        spec = launch_spec(tmp_path, ["sim", "duration=0.1s", "exit=5"], job_id="j2")
        handle, _ = await _start(spec, executor)
        assert (await asyncio.wait_for(handle.wait(), 10)).returncode == 5
        # YARD_SIM wins over the command, and over the default key by key.
        spec = launch_spec(tmp_path, ["sim", "exit=5"], env={ENV: "duration=0.1s"}, job_id="j3")
        handle, _ = await _start(spec, executor)
        assert (await asyncio.wait_for(handle.wait(), 10)).returncode == 4
        assert executor.started == 3

    asyncio.run(main())


def test_a_bad_behaviour_fails_the_start(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(StartFailed, match="YARD_SIM: unknown key 'bogus'"):
            await _start(_spec(tmp_path, "bogus=1"))

    asyncio.run(main())


def test_fail_makes_a_zero_exit_a_one(tmp_path: Path) -> None:
    async def main() -> None:
        handle, _ = await _start(_spec(tmp_path, "duration=0.05s,fail=1,log_rate=0"))
        assert (await asyncio.wait_for(handle.wait(), 10)).returncode == 1

    asyncio.run(main())


def test_oom_kills_it_as_the_kernel_would(tmp_path: Path) -> None:
    async def main() -> None:
        spec = _spec(tmp_path, "duration=10s,oom_after=0.3s,log_rate=10/s,checkpoint_every=1s")
        spec = LaunchSpec(**{**spec.__dict__, "memory": 1 << 30})
        t0 = time.monotonic()
        handle, spool = await _start(spec)
        status = await asyncio.wait_for(handle.wait(), 10)
        assert time.monotonic() - t0 < 2.0
        assert status.oom and status.signal == signal.SIGKILL and status.exit_code == 137
        assert status.describe().startswith("oom: ") and "1Gi" in status.describe()
        assert spool.read(0, spool.size).count(b"sim step=") == 3
        assert not (spec.artifact_dir / ARTIFACT_FILE).exists()

    asyncio.run(main())


def test_checkpoints_land_at_the_interval(tmp_path: Path) -> None:
    async def main() -> None:
        spec = _spec(tmp_path, "duration=1.1s,checkpoint_every=0.25s,checkpoint_bytes=200,log_rate=0")
        handle, _ = await _start(spec)
        ckpt = spec.checkpoint_dir / CHECKPOINT_FILE
        await asyncio.sleep(0.4)
        first = json.loads(ckpt.read_bytes().split(b"\n")[0])
        assert first["n"] == 1 and 0.2 <= first["progress"] <= 0.4
        await asyncio.wait_for(handle.wait(), 10)
        last = json.loads(ckpt.read_bytes().split(b"\n")[0])
        assert last["n"] == 4 and ckpt.stat().st_size == 200
        assert handle.job.checkpoints == 4
        assert [p.name for p in spec.checkpoint_dir.iterdir()] == [CHECKPOINT_FILE]  # no .tmp- left

    asyncio.run(main())


def test_stop_checkpoints_and_exits_143(tmp_path: Path) -> None:
    async def main() -> None:
        spec = _spec(tmp_path, "duration=30s,log_rate=10/s,term_delay=0.2s")
        handle, spool = await _start(spec)
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        await asyncio.wait_for(handle.stop(5.0), 10)
        assert 0.15 <= time.monotonic() - t0 < 1.0
        status = await handle.wait()
        assert status.returncode == 143 and status.exit_code == 143 and not status.ok
        saved = resumed_progress(spec.checkpoint_dir)
        assert 0.6 <= saved <= 1.2
        assert b"SIGTERM, checkpointed" in spool.stderr_tail
        await handle.stop(5.0)  # again: already over, returns at once

    asyncio.run(main())


def test_stop_kills_it_when_the_checkpoint_takes_longer_than_the_grace(tmp_path: Path) -> None:
    async def main() -> None:
        spec = _spec(tmp_path, "duration=30s,term_delay=5s,log_rate=0")
        handle, _ = await _start(spec)
        t0 = time.monotonic()
        await asyncio.wait_for(handle.stop(0.3), 10)
        assert 0.25 <= time.monotonic() - t0 < 1.5
        status = await handle.wait()
        assert status.signal == signal.SIGKILL and status.exit_code == 137
        assert not (spec.checkpoint_dir / CHECKPOINT_FILE).exists()

    asyncio.run(main())


def test_a_job_that_ignores_sigterm_runs_on_until_the_grace_ends(tmp_path: Path) -> None:
    async def main() -> None:
        spec = _spec(tmp_path, "duration=30s,on_term=ignore,log_rate=10/s")
        handle, spool = await _start(spec)
        await asyncio.sleep(0.1)
        await asyncio.wait_for(handle.stop(0.5), 10)
        status = await handle.wait()
        assert status.signal == signal.SIGKILL
        assert spool.read(0, spool.size).count(b"sim step=") >= 5  # it kept logging meanwhile

    asyncio.run(main())


def test_a_job_that_ignores_sigterm_may_still_finish_within_the_grace(tmp_path: Path) -> None:
    async def main() -> None:
        handle, _ = await _start(_spec(tmp_path, "duration=0.3s,on_term=ignore,log_rate=0"))
        await asyncio.wait_for(handle.stop(5.0), 10)
        assert (await handle.wait()).returncode == 0

    asyncio.run(main())


def test_kill_is_immediate_and_writes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        spec = _spec(tmp_path, "duration=30s,checkpoint_every=10s,log_rate=100/s")
        handle, spool = await _start(spec)
        await asyncio.sleep(0.3)
        size = spool.size
        handle.kill()
        status = await asyncio.wait_for(handle.wait(), 1)
        assert status.signal == signal.SIGKILL
        await asyncio.sleep(0.3)
        assert spool.size == size
        assert not any(spec.checkpoint_dir.iterdir()) and not any(spec.artifact_dir.iterdir())

    asyncio.run(main())


def test_a_resumed_attempt_carries_on_from_the_checkpoint(tmp_path: Path) -> None:
    async def main() -> None:
        first = _spec(tmp_path, "duration=1.2s,log_rate=10/s", attempt=1)
        handle, _ = await _start(first)
        await asyncio.sleep(0.6)
        await handle.stop(5.0)
        assert (await handle.wait()).returncode == 143
        saved = resumed_progress(first.checkpoint_dir)
        assert 0.5 <= saved <= 0.9
        second = _spec(tmp_path, "duration=1.2s,log_rate=10/s", attempt=2)
        second = LaunchSpec(**{**second.__dict__, "resume_dir": first.checkpoint_dir})
        t0 = time.monotonic()
        handle, spool = await _start(second)
        status = await asyncio.wait_for(handle.wait(), 10)
        took = time.monotonic() - t0
        assert status.returncode == 0
        assert 1.2 - saved - 0.05 <= took <= 1.2 - saved + 0.4
        log = spool.read(0, spool.size)
        assert f"resumed from checkpoint at {saved:.3f}s".encode() in log
        assert b"done after 1.200s" in log

    asyncio.run(main())


def test_an_unreadable_checkpoint_resumes_from_the_start(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_FILE).write_text("not json")
    assert resumed_progress(tmp_path) == 0.0
    assert resumed_progress(tmp_path / "missing") == 0.0
    assert resumed_progress(None) == 0.0


def test_many_jobs_cost_no_tasks_or_threads(tmp_path: Path) -> None:
    async def main() -> None:
        import threading

        executor = SimExecutor(parse_sim("duration=0.5s,log_rate=4/s"))
        tasks_before, threads_before = len(asyncio.all_tasks()), threading.active_count()
        handles = []
        for i in range(500):
            spec = launch_spec(tmp_path, ["x"], job_id=f"j{i}")
            handles.append((await _start(spec, executor))[0])
        assert len(asyncio.all_tasks()) == tasks_before
        assert threading.active_count() <= threads_before  # (a thread of an earlier test may end)
        statuses = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 20)
        assert all(s.ok for s in statuses)

    asyncio.run(main())


def test_reap_orphans_names_the_attempts_an_earlier_run_held(tmp_path: Path) -> None:
    slots = AttemptSlots(tmp_path)
    slots.acquire("j1", 2)
    free = slots.acquire("j2", 1)
    slots.release(free, log_written=False)
    assert SimExecutor().reap_orphans(tmp_path) == [("j1", 2)]
    assert SimExecutor().reap_orphans(tmp_path / "nothing") == []
