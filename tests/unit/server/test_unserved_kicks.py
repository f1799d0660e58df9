"""A new job wakes the scheduler at once unless a fresh read of the workers shows that none serves
its pool; those jobs wake it together, ``UNSERVED_KICK_DELAY_S`` later."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.server.plane import Plane
from trainyard.server.hub import Kick
from trainyard.server.services.jobs import UNSERVED_KICK_DELAY_S, ServedPools, wakes_now

pools = st.text("abc", min_size=1, max_size=3)


@given(st.none() | pools, st.none() | st.frozensets(pools))
def test_only_a_job_in_a_pool_known_unserved_waits(pool: str | None, served: frozenset[str] | None) -> None:
    waits = pool is not None and served is not None and pool not in served
    assert wakes_now(pool, served) is not waits


def test_a_read_is_trusted_for_its_ttl_only() -> None:
    now = [100.0]
    reads: list[int] = []

    def read() -> frozenset[str]:
        reads.append(1)
        return frozenset({"gpu"})

    async def main() -> None:
        pools = ServedPools(read, ttl_s=1.0, clock=lambda: now[0])
        assert pools.current() is None  # nothing read yet: a read begins
        assert pools.current() is None and len(reads) <= 1  # one read at a time
        await asyncio.sleep(0.05)
        assert pools.current() == {"gpu"} and reads == [1]
        now[0] += 1.0
        assert pools.current() is None  # stale: wake at once, read again
        await asyncio.sleep(0.05)
        assert pools.current() == {"gpu"} and len(reads) == 2

    asyncio.run(main())


def test_a_failing_read_leaves_every_job_waking_at_once() -> None:
    def read() -> frozenset[str]:
        raise OSError("database down")

    async def main() -> None:
        pools = ServedPools(read)
        assert pools.current() is None
        await asyncio.sleep(0.05)
        assert pools.current() is None

    asyncio.run(main())


async def _kicked(kick: Kick) -> bool:
    return await kick.wait(0.001)


def test_jobs_no_worker_can_take_wake_the_scheduler_together_later(plane: Plane) -> None:
    kick = plane.jobs.kick_scheduler

    async def main() -> None:
        await plane.worker("w1")  # pool "default"
        await _kicked(kick)
        await plane.submit(pool="nowhere")  # no read of the workers at hand yet: at once
        assert await _kicked(kick)
        await asyncio.sleep(0.05)
        assert plane.jobs.served_pools.current() == {"default"}
        t0 = time.monotonic()
        first = await plane.submit(pool="nowhere")
        await plane.submit(pool="elsewhere")
        assert not await _kicked(kick)
        await plane.submit(pool="default")  # a worker serves it
        assert await _kicked(kick)
        await plane.submit()  # no pool: any worker
        assert await _kicked(kick)
        assert await kick.wait(2.0)  # the late kick, once for both
        assert time.monotonic() - t0 >= UNSERVED_KICK_DELAY_S * 0.9
        assert not await kick.wait(UNSERVED_KICK_DELAY_S * 1.5)
        plane.schedule()  # the cycle it wakes gives the job its reason
        job = plane.job(first.id)
        assert job.pending_reason, job

    asyncio.run(main())
