"""Preemption: an urgent job evicts a preemptible low-priority one. The victim is told once (again
only after the stop grace), the freed worker is claimed for the urgent job, and the victim's
PREEMPTED report requeues it without using a retry."""

from __future__ import annotations

import pytest

from tests.unit.server.plane import CANCEL_GRACE_S, HEARTBEAT_S, Plane, drained
from trainyard.model.records import Worker
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.store import Lease

pytestmark = pytest.mark.anyio


async def _victim_running(plane: Plane) -> tuple[Worker, Lease]:
    w = await plane.worker(cpu=4)
    await plane.submit(priority="low", preemptible=True, retry={"max_attempts": 1})
    (lease,) = plane.schedule()
    await plane.start(lease)
    return w, lease


async def test_urgent_job_preempts_and_takes_the_freed_worker(plane: Plane) -> None:
    w, lease = await _victim_running(plane)
    stream = plane.dispatcher.connect(w.id)
    urgent = await plane.submit(priority="urgent")

    assert plane.schedule() == []  # the victim still holds the capacity through its grace
    notes = plane.dispatcher.preempt(plane.scheduler.take_preemptions())

    assert notes == []
    (msg,) = drained(stream)
    assert msg.command.kind == pb.Command.PREEMPT
    assert (msg.command.job_id, msg.command.lease_token) == (lease.job_id, lease.lease_token)
    assert msg.command.reason.startswith("preempted (") and urgent.id in msg.command.reason

    # The victim checkpoints and stops: requeued, its retry budget untouched.
    assert await plane.finish(lease, AttemptOutcome.PREEMPTED, exit_code=None) is JobStatus.PENDING
    victim = plane.job(lease.job_id)
    assert victim.status is JobStatus.PENDING

    (placed,) = plane.schedule()  # the claimed worker goes to the urgent job, not back to the victim
    assert (placed.job_id, placed.worker_id) == (urgent.id, w.id)


async def test_a_victim_is_told_again_only_after_the_stop_grace(plane: Plane) -> None:
    w, lease = await _victim_running(plane)
    await plane.submit(priority="urgent")
    plane.schedule()
    first = plane.scheduler.take_preemptions()
    assert [c.job_id for c in first] == [lease.job_id]
    # Not connected here: the command goes to the other replicas as a note.
    (note,) = plane.dispatcher.preempt(first)
    assert (note.worker_id, note.kind, note.jobs) == (w.id, "preempt", ((lease.job_id, lease.attempt),))

    plane.clock.advance(1)
    plane.schedule()
    assert plane.scheduler.take_preemptions() == []  # it is stopping: not chosen twice

    # The grace has passed and it still runs: forgotten at the next cycle's end, told again after.
    plane.clock.advance(CANCEL_GRACE_S + 3 * HEARTBEAT_S + 10)
    await plane.beat(w)
    plane.schedule()
    assert plane.scheduler.take_preemptions() == []
    plane.schedule()
    assert [c.job_id for c in plane.scheduler.take_preemptions()] == [lease.job_id]


async def test_a_non_preemptible_job_is_never_a_victim(plane: Plane) -> None:
    await plane.worker(cpu=4)
    await plane.submit(priority="low", preemptible=False)
    (lease,) = plane.schedule()
    await plane.start(lease)
    urgent = await plane.submit(priority="urgent")

    assert plane.schedule() == []
    assert plane.scheduler.take_preemptions() == []
    assert plane.job(urgent.id).status is JobStatus.PENDING
