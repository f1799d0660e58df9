"""A cycle's leases go down their workers' streams before the cycle writes what it tells people
(queue board, demand, pending reasons): those writes are nothing a worker needs to wait for."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.server.run import LeaderLoops, bootstrap
from trainyard.server.settings import Settings

ALICE = User("alice", "vision", "user")
pytestmark = pytest.mark.anyio


async def test_the_lease_is_on_the_stream_before_the_cycle_publishes(tmp_path: Path) -> None:
    platform = await asyncio.to_thread(bootstrap, Settings(home=tmp_path / "home"))
    try:
        loops = LeaderLoops(platform, None)
        await loops.lead_step()
        worker, _ = await platform.fleet.register(
            cached_uris=None,
            name="w1",
            hostname="w1",
            pool="default",
            region=None,
            cpu=4,
            memory=16 << 30,
            gpu=0,
            gpu_type=None,
            labels={},
            version="test",
        )
        stream = platform.channels.connect(worker.id)
        placed = (await platform.jobs.submit(ALICE, JobSpec(command=["true"]), None)).job.id
        waiting = (
            await platform.jobs.submit(
                ALICE, JobSpec.model_validate({"command": ["true"], "resources": {"cpu": 64}}), None
            )
        ).job.id
        seen_at_publish: list[int] = []
        publish = platform.scheduler.publish_cycle

        def publishing() -> Any:
            seen_at_publish.append(stream.qsize())
            return publish()

        platform.scheduler.publish_cycle = publishing  # type: ignore[method-assign]
        await loops.schedule_step()
        assert seen_at_publish == [1], "the lease was not on the stream when the cycle published"
        assert stream.get_nowait().assignment.job_id == placed
        job = await platform.jobs.current(waiting)
        assert job is not None and job.pending_reason  # and the cycle did publish, after
    finally:
        platform.close()


async def test_schedule_once_still_places_and_publishes(tmp_path: Path) -> None:
    platform = await asyncio.to_thread(bootstrap, Settings(home=tmp_path / "home"))
    try:
        waiting = (await platform.jobs.submit(ALICE, JobSpec(command=["true"], pool="nowhere"), None)).job.id
        assert await asyncio.to_thread(platform.scheduler.schedule_once) == []
        job = await platform.jobs.current(waiting)
        assert job is not None and job.pending_reason
        platform.scheduler.publish_cycle()  # published already: nothing left, nothing written twice
    finally:
        platform.close()
