"""Lost attempts: a worker past its heartbeats is declared dead and its attempts end LOST (the job
is retried as an infrastructure failure); a worker that registered before this replica took the
lead gets the restart grace; an attempt a live worker stops listing, or a lease it never mentions,
is not left hanging."""

from __future__ import annotations

import pytest

from tests.unit.server.plane import HEARTBEAT_S, RESTART_GRACE_S, Plane
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.server.absent import ABSENT_BEATS

pytestmark = pytest.mark.anyio


async def test_a_silent_worker_is_declared_dead_and_its_job_retried(plane: Plane) -> None:
    w = await plane.worker()
    job = await plane.submit()
    (lease,) = plane.schedule()
    await plane.start(lease)

    plane.clock.advance(3 * HEARTBEAT_S - 0.1)
    assert plane.reconciler.reconcile_once() == []  # its registration's beat still counts

    plane.clock.advance(0.2)
    assert plane.reconciler.reconcile_once() == [job.id]

    assert plane.store.get_worker(w.id).status == "DEAD"  # type: ignore[union-attr]
    lost = plane.job(job.id)
    assert lost.status is JobStatus.PENDING  # retried: "infra" is in the default retry policy
    assert lost.attempts[-1].outcome == AttemptOutcome.LOST.value
    # Its cached credential is forgotten: the agent's next heartbeat sees DEAD, not a cached ALIVE.
    seen = await plane.auth.worker(plane.credentials[w.id])
    assert seen is not None and seen.status == "DEAD"
    assert plane.schedule() == []  # and nothing is placed on a dead worker


async def test_a_beating_worker_keeps_its_job(plane: Plane) -> None:
    w = await plane.worker()
    job = await plane.submit()
    (lease,) = plane.schedule()
    await plane.start(lease)
    for _ in range(10):
        plane.clock.advance(HEARTBEAT_S)
        await plane.beat(w)
        assert plane.reconciler.reconcile_once() == []
    assert plane.job(job.id).status is JobStatus.RUNNING


async def test_workers_of_an_earlier_leader_get_the_restart_grace(plane: Plane) -> None:
    w = await plane.worker()
    job = await plane.submit()
    (lease,) = plane.schedule()
    await plane.start(lease)
    # This replica loses the lead and takes it again: the agents are reconnecting with backoff.
    plane.replica.follow()
    plane.clock.advance(1)
    assert plane.replica.lead()

    plane.clock.advance(RESTART_GRACE_S - 1)  # long past 3 heartbeats, within the restart grace
    assert plane.reconciler.reconcile_once() == []
    plane.clock.advance(1.1)
    assert plane.reconciler.reconcile_once() == [job.id]
    assert plane.store.get_worker(w.id).status == "DEAD"  # type: ignore[union-attr]


async def test_an_attempt_its_live_worker_stopped_listing_ends_lost(plane: Plane) -> None:
    w = await plane.worker()
    job = await plane.submit()
    (lease,) = plane.schedule()
    await plane.start(lease)
    await plane.beat(w)
    plane.reconciler.reconcile_once()  # the attempt is seen RUNNING here from now on

    for i in range(ABSENT_BEATS):
        plane.clock.advance(HEARTBEAT_S)
        await plane.beat(w, running=[])  # alive, but no longer running it
        touched = plane.reconciler.reconcile_once()
        assert (job.id in touched) == (i == ABSENT_BEATS - 1)

    closed = plane.job(job.id)
    assert closed.status is JobStatus.PENDING and closed.attempts[-1].outcome == AttemptOutcome.LOST.value
    assert plane.store.get_worker(w.id).status == "ALIVE"  # type: ignore[union-attr]


async def test_a_lease_that_never_reached_its_worker_is_requeued(plane: Plane) -> None:
    w = await plane.worker()
    job = await plane.submit()
    (lease,) = plane.schedule()  # the assignment is lost on the way: never started, never listed
    window = 3 * HEARTBEAT_S + 5.0

    plane.clock.advance(window - 0.5)
    await plane.beat(w, running=[])
    assert plane.reconciler.reconcile_once() == []
    plane.clock.advance(1)
    await plane.beat(w, running=[])
    assert plane.reconciler.reconcile_once() == [job.id]

    requeued = plane.job(job.id)
    assert requeued.status is JobStatus.PENDING
    (again,) = plane.schedule()
    assert again.attempt == lease.attempt + 1


async def test_a_lost_attempt_uses_a_retry(plane: Plane) -> None:
    await plane.worker()
    job = await plane.submit(retry={"max_attempts": 1})
    (lease,) = plane.schedule()
    await plane.start(lease)
    plane.clock.advance(3 * HEARTBEAT_S + 0.1)
    assert plane.reconciler.reconcile_once() == [job.id]
    assert plane.job(job.id).status is JobStatus.FAILED  # unlike a preemption
