"""An agent stopping with many jobs and slow storage: every attempt is reported PREEMPTED before the
agent gives up on them (not left to end LOST), checkpoints first, and what could not go up in time is
abandoned cleanly, its files kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.worker import WorkerConfig
from trainyard.worker.agent import Agent
from trainyard.worker.executors.sim import SimExecutor
from trainyard.worker.transfer import UploadDeadline

from .fake_control_plane import BOOTSTRAP, FakeWorkerService, ObjectStore, start_server

pytestmark = pytest.mark.timeout(120)

JOBS = 40


def _config(tmp_path: Path, port: int, **kw: object) -> WorkerConfig:
    base: dict[str, object] = dict(
        server=f"127.0.0.1:{port}",
        token=BOOTSTRAP,
        name="stopping",
        work_dir=tmp_path / "agent",
        cpus=64,
        memory=256 << 30,
        log_flush_s=0.05,
        seal_interval_s=0.3,
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
        rpc_timeout_s=5,
        # As a real agent: uploads ride out minutes of trouble, however long the stop may take.
        upload_attempts=4,
        upload_retry_s=1800,
        preempt_grace_s=1.0,
        shutdown_timeout_s=6.0,
        http_timeout_s=2.0,
    )
    base.update(kw)
    return WorkerConfig(**base)  # type: ignore[arg-type]


async def _stop_many(tmp_path: Path, put_delay_s: float) -> tuple[FakeWorkerService, ObjectStore, float]:
    objects = ObjectStore()
    svc = FakeWorkerService(objects)
    server, port = await start_server(svc)
    cfg = _config(tmp_path, port)
    stop = asyncio.Event()
    # Two connections for forty jobs: the fleet's agents had four for up to sixty-four.
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    try:
        async with httpx.AsyncClient(timeout=cfg.http_timeout_s, limits=limits) as http:
            agent = Agent(cfg, executor=SimExecutor(), http=http, sample_gpus=False, http_connections=2)
            task = asyncio.create_task(agent.run(stop))
            await svc.wait_for(lambda: svc.rec.lease_connects > 0 or task.done())
            for k in range(JOBS):
                a = pb.Assignment(
                    job_id=f"j{k}",
                    attempt=1,
                    lease_token=f"lt-{k}",
                    command=["sim"],
                    env={"YARD_SIM": "duration=10m,log_rate=20/s,checkpoint_bytes=2k"},
                )
                svc.assign(a)
            await svc.wait_for(
                lambda: all(pb.ReportRequest.STARTED in svc.phases(f"j{k}") for k in range(JOBS)), 60
            )
            objects.put_delay_s = put_delay_s
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            stop.set()
            await asyncio.wait_for(task, 60)
            took = loop.time() - t0
    finally:
        await server.stop(0)
        objects.close()
    return svc, objects, took


def test_a_stop_reports_every_attempt_preempted_with_its_checkpoint(tmp_path: Path) -> None:
    async def main() -> None:
        svc, objects, took = await _stop_many(tmp_path, put_delay_s=0.05)
        ends = [svc.finished(f"j{k}") for k in range(JOBS)]
        assert all(e is not None and e.outcome == "preempted" for e in ends), ends
        # Storage was slow but not stuck: every checkpoint made it, and each is stored.
        keys = [e.checkpoint_key for e in ends if e is not None]
        assert all(keys) and all(k in objects.objects for k in keys)
        assert took < 7.0 + 5.0, took

    asyncio.run(main())


def test_uploads_that_cannot_finish_in_time_are_abandoned_and_every_attempt_still_reports(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        # 3 s a PUT over two connections: forty checkpoints and log chunks would take over a minute.
        svc, objects, took = await _stop_many(tmp_path, put_delay_s=3.0)
        ends = [svc.finished(f"j{k}") for k in range(JOBS)]
        assert all(e is not None and e.outcome == "preempted" for e in ends), [
            k for k, e in enumerate(ends) if e is None or e.outcome != "preempted"
        ]
        abandoned = [e for e in ends if e is not None and "abandoned" in e.reason]
        assert abandoned, "no upload was slow enough to abandon"
        # The agent waited its grace and shutdown time at most, and the reports got in before it.
        assert took < 1.0 + 6.0 + 3.0, took
        # What went up is reported; an abandoned checkpoint is not claimed.
        for e in ends:
            assert e is not None
            if e.checkpoint_key:
                assert e.checkpoint_key in objects.objects
        kept = list((tmp_path / "agent").rglob("*"))
        assert kept, "abandoned uploads keep their attempts' files"

    asyncio.run(main())


def test_the_deadline_lets_work_finish_before_it_and_cancels_work_after_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = UploadDeadline()
        assert await d.within(asyncio.sleep(0.01, "done")) == (True, "done")
        d.set(loop.time() + 0.2)
        d.set(loop.time() + 100)  # the first deadline stands
        cancelled = asyncio.Event()

        async def slow() -> str:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "late"

        t0 = loop.time()
        assert await d.within(slow()) == (False, None)
        assert cancelled.is_set() and loop.time() - t0 < 5
        with pytest.raises(KeyError):
            await d.within(_raise())

    async def _raise() -> None:
        raise KeyError("x")

    asyncio.run(main())
