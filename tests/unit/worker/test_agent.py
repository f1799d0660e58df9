"""The agent against an in-process WorkerService: the protocol as the worker speaks it."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.worker import RegistrationRefused, WorkerConfig, run_agent
from trainyard.worker.slots import find_slot

from .fake_control_plane import BOOTSTRAP, FakeWorkerService, ObjectStore, start_server
from .helpers import PY, alive, kill_quietly, wait_for_async, wait_gone_async

pytestmark = pytest.mark.timeout(60)


def _config(tmp_path: Path, port: int, **kw: Any) -> WorkerConfig:
    base: dict[str, Any] = dict(
        server=f"127.0.0.1:{port}",
        token=BOOTSTRAP,
        name="test-worker",
        work_dir=tmp_path / "agent",
        cpus=4,
        memory=8 << 30,
        gpus=2,
        gpu_type="a100",
        log_flush_s=0.05,
        seal_interval_s=0.3,
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
        rpc_timeout_s=5,
        upload_attempts=2,
        upload_retry_s=0.5,
    )
    base.update(kw)
    return WorkerConfig(**base)


@asynccontextmanager
async def agent(
    tmp_path: Path, **kw: Any
) -> AsyncIterator[tuple[FakeWorkerService, ObjectStore, WorkerConfig]]:
    objects = ObjectStore()
    svc = FakeWorkerService(objects)
    server, port = await start_server(svc)
    cfg = _config(tmp_path, port, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(cfg, stop))
    try:
        await svc.wait_for(lambda: svc.rec.lease_connects > 0 or task.done())
        if task.done():
            task.result()
        yield svc, objects, cfg
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await server.stop(0)
        objects.close()


async def _eventually(predicate: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


def _assignment(job_id: str, command: list[str], **kw: Any) -> pb.Assignment:
    env = {"TRAINYARD_JOB_ID": job_id, "TRAINYARD_ATTEMPT": "1", **kw.pop("env", {})}
    return pb.Assignment(job_id=job_id, attempt=1, lease_token=f"lt-{job_id}", command=command, env=env, **kw)


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sealed_log(svc: FakeWorkerService, objects: ObjectStore, job_id: str) -> bytes:
    seals = sorted((s for s in svc.rec.seals if s.job_id == job_id), key=lambda s: s.seq)
    assert [s.seq for s in seals] == list(range(len(seals)))
    out = b""
    for s in seals:
        assert s.start_offset == len(out)
        stored = objects.objects[s.object_key]
        assert len(stored) == s.stored_size
        out += gzip.decompress(stored)
        assert s.end_offset == len(out)
    return out


JOB = textwrap.dedent(
    """
    import os, pathlib, sys
    sys.stdout.buffer.write(b"partial")
    sys.stdout.flush()
    sys.stderr.write("warning: \\u00e9\\n")
    sys.stderr.flush()
    print(" line")
    pathlib.Path(os.environ["TRAINYARD_ARTIFACT_DIR"], "metrics.json").write_text('{"acc": 1}')
    pathlib.Path("outputs").mkdir()
    pathlib.Path("outputs/model.bin").write_bytes(b"\\x00" * 100_000)
    print("gpus=" + os.environ["CUDA_VISIBLE_DEVICES"])
    """
)


def test_a_job_runs_end_to_end(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, objects, cfg):
            reg = svc.rec.registers[0]
            assert (reg.name, reg.capacity.gpu, reg.capacity.gpu_type, reg.capacity.cpu) == (
                "test-worker",
                2,
                "a100",
                4,
            )
            svc.assign(_assignment("j1", [PY, "-c", JOB], gpu_indices=[1], artifact_paths=["outputs"]))
            done = await svc.wait_finished("j1")
            assert done.outcome == "succeeded", done.reason
            assert done.has_exit_code and done.exit_code == 0
            assert done.lease_token == "lt-j1" and done.worker_id == "w-1"
            assert done.stderr_tail == "warning: é\n".encode()
            assert svc.phases("j1") == [pb.ReportRequest.STARTED, pb.ReportRequest.FINISHED]

            log = _sealed_log(svc, objects, "j1")
            assert log.startswith(b"partial")
            assert b"warning: \xc3\xa9\n" in log and b" line\n" in log and b"gpus=1\n" in log
            assert done.log_bytes == len(log)
            await svc.wait_for(lambda: bytes(svc.rec.logs[("j1", 1)]) == log)

            arts = {a.path: a for a in done.artifacts}
            assert set(arts) == {"metrics.json", "outputs/model.bin"}
            model = arts["outputs/model.bin"]
            assert model.size == 100_000
            assert model.sha256 == hashlib.sha256(b"\x00" * 100_000).hexdigest()
            assert objects.objects[model.object_key] == b"\x00" * 100_000
            assert objects.objects[arts["metrics.json"].object_key] == b'{"acc": 1}'
            assert not done.checkpoint_key
            # The attempt gives its directory up once the final report is in (the artifacts it
            # left make it dirty: removed, not pooled).
            await _eventually(lambda: find_slot(cfg.work_dir, "j1", 1) is None)
            assert not list((cfg.work_dir / "slots").glob("*/artifacts/metrics.json"))

    asyncio.run(main())


def test_resent_leases_never_start_an_attempt_twice(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, _, _):
            marker = tmp_path / "runs"
            script = f"open({str(marker)!r}, 'a').write('x'); import time; time.sleep(0.5)"
            a = _assignment("j2", [PY, "-c", script])
            svc.assign(a)
            svc.assign(a)  # a duplicate on the live stream
            await svc.wait_for(lambda: pb.ReportRequest.STARTED in svc.phases("j2"))
            svc.drop_lease_streams()  # the reconnect re-sends every attempt still leased
            await svc.wait_for(lambda: svc.rec.lease_connects >= 2)
            await svc.wait_finished("j2")
            svc.leased[("j2", 1)] = a  # a re-send racing the final report
            svc.drop_lease_streams()
            await svc.wait_for(lambda: svc.rec.lease_connects >= 3)
            await asyncio.sleep(0.2)
            assert marker.read_text() == "x"
            assert svc.phases("j2") == [pb.ReportRequest.STARTED, pb.ReportRequest.FINISHED]

    asyncio.run(main())


def test_cancel_stops_the_job_and_uploads_its_checkpoint(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, pathlib, signal, sys, time
        def on_term(*_):
            pathlib.Path(os.environ["TRAINYARD_CHECKPOINT_DIR"], "step.txt").write_text("42")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        time.sleep(600)
        """
    )

    async def main() -> None:
        async with agent(tmp_path) as (svc, objects, _):
            svc.assign(_assignment("j3", [PY, "-c", script]))
            await svc.wait_for(lambda: b"ready" in svc.rec.logs[("j3", 1)])
            svc.command(pb.Command(kind=pb.Command.CANCEL, job_id="j3", attempt=1, lease_token="lt-j3"))
            done = await svc.wait_finished("j3", timeout=20)  # a loaded CI machine
            assert done.outcome == "cancelled"
            assert done.exit_code == 0
            ckpt = objects.objects[done.checkpoint_key]
            with tarfile.open(fileobj=io.BytesIO(ckpt), mode="r:gz") as tf:
                member = tf.extractfile("step.txt")
                assert member is not None and member.read() == b"42"

    asyncio.run(main())


def test_heartbeat_commands_preempt_and_kill_stale(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, _, _):
            sleeper = [PY, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(600)"]
            svc.assign(_assignment("j4", sleeper))
            svc.assign(_assignment("j5", sleeper))
            await svc.wait_for(lambda: all(svc.rec.logs[(j, 1)].endswith(b"\n") for j in ("j4", "j5")))
            await svc.wait_for(lambda: any(len(h.running) == 2 for h in svc.rec.heartbeats))
            pid5 = int(svc.rec.logs[("j5", 1)])
            svc.heartbeat_commands = [
                pb.Command(kind=pb.Command.PREEMPT, job_id="j4", attempt=1, reason="spot reclaim"),
                pb.Command(kind=pb.Command.KILL_STALE, job_id="j5", attempt=1, lease_token="lt-j5"),
            ]
            done = await svc.wait_finished("j4", timeout=5)
            assert (done.outcome, done.reason) == ("preempted", "spot reclaim")
            try:
                assert await wait_gone_async(pid5)
            finally:
                kill_quietly(pid5)
            await svc.wait_for(lambda: all(len(h.running) == 0 for h in svc.rec.heartbeats[-1:]))
            assert svc.finished("j5") is None

    asyncio.run(main())


def test_max_runtime_times_out(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, _, _):
            svc.assign(_assignment("j6", [PY, "-c", "import time; time.sleep(600)"], max_runtime_s=0.3))
            done = await svc.wait_finished("j6", timeout=5)
            assert done.outcome == "timed_out"
            assert "max runtime" in done.reason

    asyncio.run(main())


def test_start_failures(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, objects, _):
            svc.assign(_assignment("j7", ["no-such-command-xyz"]))
            done = await svc.wait_finished("j7")
            assert done.outcome == "start_failed"
            assert "command not found" in done.reason
            assert not done.has_exit_code

            info = tarfile.TarInfo("../escaped.txt")
            objects.objects["bundles/evil"] = _tarball({"../escaped.txt": b"pwned"})
            svc.assign(_assignment("j8", [PY, "-c", "pass"], workdir_url=objects.url("bundles/evil")))
            done = await svc.wait_finished("j8")
            assert done.outcome == "start_failed"
            assert "workdir unpack failed" in done.reason
            assert info.name == "../escaped.txt"

            svc.assign(_assignment("j9", [PY, "-c", "pass"], workdir_url=objects.url("bundles/missing")))
            done = await svc.wait_finished("j9")
            assert (done.outcome, done.reason) == (
                "start_failed",
                "workdir download failed: download: HTTP 404",
            )

    asyncio.run(main())


def test_workdir_bundle_and_resume(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, objects, _):
            objects.objects["bundles/b1"] = _tarball(
                {
                    "train.py": b"import os\nprint(open(os.environ['TRAINYARD_RESUME_FROM'] + '/step').read())\n"
                }
            )
            objects.objects["ckpt/c1"] = _tarball({"step": b"7"})
            svc.assign(
                _assignment(
                    "j10",
                    [PY, "train.py"],
                    workdir_url=objects.url("bundles/b1"),
                    resume_from_url=objects.url("ckpt/c1"),
                )
            )
            done = await svc.wait_finished("j10")
            assert done.outcome == "succeeded", done.reason
            await svc.wait_for(lambda: bytes(svc.rec.logs[("j10", 1)]) == b"7\n")

    asyncio.run(main())


def test_a_trivial_job_costs_at_most_two_reports_and_nothing_else(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, _, _):
            for i in range(20):
                svc.assign(_assignment(f"t{i}", ["true"]))
            for i in range(20):
                done = await svc.wait_finished(f"t{i}")
                assert done.outcome == "succeeded"
                assert done.log_bytes == 0
            assert svc.rec.log_messages == 0
            assert svc.rec.url_requests == []
            assert svc.rec.seals == []
            # STARTED is merged into FINISHED when the process is over within a few milliseconds.
            finished = [r for r in svc.rec.reports if r.phase == pb.ReportRequest.FINISHED]
            assert len(finished) == 20 and len(svc.rec.reports) <= 40

    asyncio.run(main())


def test_reports_are_batched_and_fall_back_to_single_calls(tmp_path: Path) -> None:
    async def main(batching: bool) -> None:
        async with agent(tmp_path / str(batching)) as (svc, _, _):
            svc.batching = batching
            for i in range(30):
                svc.assign(_assignment(f"b{i}", ["true"]))
            for i in range(30):
                assert (await svc.wait_finished(f"b{i}")).outcome == "succeeded"
            finished = [r for r in svc.rec.reports if r.phase == pb.ReportRequest.FINISHED]
            assert len(finished) == 30
            if batching:
                assert sum(svc.rec.batches) == len(svc.rec.reports)
            else:
                assert svc.rec.batches == []

    asyncio.run(main(True))
    asyncio.run(main(False))


def test_stale_started_report_kills_the_job(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, _, _):
            svc.stale_on_started.add(("j11", 1))
            pid_file = tmp_path / "pid"
            script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
            svc.assign(_assignment("j11", [PY, "-c", script]))
            await svc.wait_for(lambda: pb.ReportRequest.STARTED in svc.phases("j11"))
            seen = len(svc.rec.heartbeats)
            await svc.wait_for(lambda: len(svc.rec.heartbeats) > seen + 1, timeout=5)
            assert len(svc.rec.heartbeats[-1].running) == 0
            if pid_file.exists():
                pid = int(pid_file.read_text())
                assert await wait_gone_async(pid)
            assert svc.phases("j11") == [pb.ReportRequest.STARTED]

    asyncio.run(main())


def test_upload_failure_is_an_infra_outcome(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, objects, _):
            objects.fail_puts = True
            script = (
                "import os, pathlib; pathlib.Path(os.environ['TRAINYARD_ARTIFACT_DIR'], 'a').write_text('x')"
            )
            svc.assign(_assignment("j12", [PY, "-c", script]))
            done = await svc.wait_finished("j12")
            assert done.outcome == "infra"
            assert "artifact upload failed" in done.reason

    asyncio.run(main())


def test_reports_survive_a_control_plane_outage(tmp_path: Path) -> None:
    async def main() -> None:
        objects = ObjectStore()
        svc = FakeWorkerService(objects)
        server, port = await start_server(svc)
        cfg = _config(tmp_path, port)
        stop = asyncio.Event()
        task = asyncio.create_task(run_agent(cfg, stop))
        go = tmp_path / "go"
        script = textwrap.dedent(
            f"""
            import os, time
            print("started", flush=True)
            while not os.path.exists({str(go)!r}):
                time.sleep(0.01)
            print("finishing", flush=True)
            """
        )
        try:
            await svc.wait_for(lambda: svc.rec.lease_connects > 0)
            svc.assign(_assignment("j13", [PY, "-c", script]))
            await svc.wait_for(lambda: b"started" in svc.rec.logs[("j13", 1)])
            await server.stop(0)
            go.touch()  # the job ends while nobody listens: its last line reaches the local spool
            slot = find_slot(cfg.work_dir, "j13", 1)
            assert slot is not None
            await wait_for_async(lambda: b"finishing" in (slot / "log").read_bytes(), 10)
            server, _ = await start_server(svc, port)
            done = await svc.wait_finished("j13")
            assert done.outcome == "succeeded"
            assert _sealed_log(svc, objects, "j13") == b"started\nfinishing\n"
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await server.stop(0)
            objects.close()

    asyncio.run(main())


def test_stop_preempts_running_jobs_and_reports_them(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, _, cfg):
            pid_file = tmp_path / "pid"
            script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
            svc.assign(_assignment("j14", [PY, "-c", script]))
            await svc.wait_for(lambda: pb.ReportRequest.STARTED in svc.phases("j14"))
            await _eventually(lambda: pid_file.exists() and pid_file.read_text() != "")
        # Leaving the context set the stop event and waited for the agent to return.
        done = svc.finished("j14")
        assert done is not None and done.outcome == "preempted"
        pid = int(pid_file.read_text())
        assert not alive(pid) or await wait_gone_async(pid)
        assert cfg.work_dir.exists()

    asyncio.run(main())


def test_a_refused_bootstrap_token_fails_fast(tmp_path: Path) -> None:
    async def main() -> None:
        objects = ObjectStore()
        svc = FakeWorkerService(objects)
        server, port = await start_server(svc)
        try:
            with pytest.raises(RegistrationRefused, match="UNAUTHENTICATED"):
                await asyncio.wait_for(run_agent(_config(tmp_path, port, token="wrong")), 10)
        finally:
            await server.stop(0)
            objects.close()

    asyncio.run(main())


def test_an_unknown_worker_registers_again_and_keeps_its_jobs(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, _, _):
            go = tmp_path / "go"
            script = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.01)"
            svc.assign(_assignment("j15", [PY, "-c", script]))
            await svc.wait_for(lambda: pb.ReportRequest.STARTED in svc.phases("j15"))
            connects = svc.rec.lease_connects
            # The control plane forgot us and rotated credentials: old-token calls are refused.
            svc.token = "rotated-token"
            svc.known = False
            await svc.wait_for(lambda: len(svc.rec.registers) >= 2)
            await svc.wait_for(lambda: svc.rec.lease_connects > connects)
            go.touch()
            done = await svc.wait_finished("j15")
            assert done.outcome == "succeeded"
            assert svc.phases("j15") == [pb.ReportRequest.STARTED, pb.ReportRequest.FINISHED]

    asyncio.run(main())
