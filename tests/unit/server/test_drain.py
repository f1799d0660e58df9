"""Drains: a drained worker takes no new work, is told so on every heartbeat, and past its deadline
is told to preempt its attempts, which are requeued without using a retry. An agent that drains
itself (a spot notice) is marked DRAINING by its heartbeat."""

from __future__ import annotations

import pytest

from tests.unit.server.plane import Plane, drained
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.server.services.fleet import DRAIN_PREEMPT_REASON

pytestmark = pytest.mark.anyio


async def test_drain_takes_no_new_work_and_preempts_at_the_deadline(plane: Plane) -> None:
    w = await plane.worker("gpu-1", cpu=8)
    stream = plane.dispatcher.connect(w.id)
    job = await plane.submit(retry={"max_attempts": 1})  # a preemption must not use it up
    (lease,) = plane.schedule()
    await plane.start(lease)
    drained(stream)

    worker = await plane.fleet.drain("gpu-1", 60)  # by name; an id works too

    assert worker is not None and worker.status == "DRAINING"
    assert worker.drain_deadline == pytest.approx(plane.clock() + 60)
    assert [m.command.kind for m in drained(stream)] == [pb.Command.DRAIN]
    await plane.submit()
    assert plane.schedule() == []  # room for it, but not on a draining worker

    plane.clock.advance(30)
    assert [c.kind for c in await plane.beat(w)] == [pb.Command.DRAIN]

    plane.clock.advance(31)
    drain, preempt = await plane.beat(w)
    assert drain.kind == pb.Command.DRAIN
    assert (preempt.kind, preempt.job_id, preempt.attempt) == (pb.Command.PREEMPT, job.id, lease.attempt)
    assert (preempt.lease_token, preempt.reason) == (lease.lease_token, DRAIN_PREEMPT_REASON)

    assert await plane.finish(lease, AttemptOutcome.PREEMPTED, exit_code=None) is JobStatus.PENDING
    requeued = plane.job(job.id)
    assert requeued.status is JobStatus.PENDING


async def test_draining_an_unknown_worker_finds_none(plane: Plane) -> None:
    await plane.worker("w1")
    assert await plane.fleet.drain("nope", 0) is None


async def test_an_agent_that_drains_itself_is_marked_draining(plane: Plane) -> None:
    w = await plane.worker()
    job = await plane.submit()
    (lease,) = plane.schedule()
    await plane.start(lease)

    assert [c.kind for c in await plane.beat(w, draining=True)] == [pb.Command.DRAIN]

    assert plane.store.get_worker(w.id).status == "DRAINING"  # type: ignore[union-attr]
    plane.clock.advance(3600)
    await plane.beat(w, draining=True)
    # No deadline of the platform's: the agent preempts its own jobs (it knows its notice period).
    assert [c.kind for c in await plane.beat(w, draining=True)] == [pb.Command.DRAIN]
    assert plane.job(job.id).status is JobStatus.RUNNING
