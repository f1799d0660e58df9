"""Cancel: a pending job ends at once; a running one is CANCELLING until its worker confirms (told
over its stream, or through the other replicas); a finished one stays; the reconciler finishes a
cancel no worker confirms."""

from __future__ import annotations

import pytest

from tests.unit.server.plane import ALICE, BOB, CANCEL_GRACE_S, HEARTBEAT_S, VIEWER, Plane, drained
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.store import NotFound

pytestmark = pytest.mark.anyio


async def test_pending_job_is_cancelled_at_once(plane: Plane) -> None:
    job = await plane.submit()
    cancelled = await plane.jobs.cancel(ALICE, job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert plane.schedule() == []  # nothing left to place


async def test_running_job_is_told_to_stop_over_its_stream(plane: Plane) -> None:
    w = await plane.worker()
    stream = plane.dispatcher.connect(w.id)
    job = await plane.submit()
    (lease,) = plane.schedule()
    await plane.start(lease)
    drained(stream)  # the assignment

    job = await plane.jobs.cancel(ALICE, job.id)

    assert job.status is JobStatus.CANCELLING
    (msg,) = drained(stream)
    assert msg.command.kind == pb.Command.CANCEL
    assert (msg.command.job_id, msg.command.attempt) == (job.id, lease.attempt)
    assert msg.command.lease_token == lease.lease_token
    assert msg.command.reason == "cancelled by alice"
    assert plane.notifier.sent == []
    # The worker's report of the stopped process ends it.
    assert await plane.finish(lease, AttemptOutcome.CANCELLED, exit_code=-15) is JobStatus.CANCELLED


async def test_a_worker_connected_elsewhere_gets_a_note(plane: Plane) -> None:
    await plane.worker()
    job = await plane.submit()
    (lease,) = plane.schedule()
    await plane.start(lease)

    await plane.jobs.cancel(ALICE, job.id)

    (note,) = plane.notifier.sent
    assert (note.worker_id, note.kind, note.jobs) == (lease.worker_id, "cancel", ((job.id, lease.attempt),))


async def test_a_finished_job_stays_as_it_was(plane: Plane) -> None:
    await plane.worker()
    job = await plane.submit()
    (lease,) = plane.schedule()
    await plane.start(lease)
    await plane.finish(lease, AttemptOutcome.SUCCEEDED)

    again = await plane.jobs.cancel(ALICE, job.id)

    assert again.status is JobStatus.SUCCEEDED
    assert plane.notifier.sent == []


async def test_viewers_and_other_teams_cannot_cancel(plane: Plane) -> None:
    job = await plane.submit()
    with pytest.raises(PermissionError):
        await plane.jobs.cancel(VIEWER, job.id)
    with pytest.raises(NotFound):  # another team's job is one that does not exist
        await plane.jobs.cancel(BOB, job.id)
    assert plane.job(job.id).status is JobStatus.PENDING


async def test_reconciler_finishes_a_cancel_no_worker_confirms(plane: Plane) -> None:
    w = await plane.worker()
    job = await plane.submit()
    (lease,) = plane.schedule()
    await plane.start(lease)
    await plane.jobs.cancel(ALICE, job.id)
    grace = CANCEL_GRACE_S + 2 * HEARTBEAT_S + 30

    plane.clock.advance(grace - 1)
    await plane.beat(w)  # the worker is alive, it just never confirms
    assert job.id not in plane.reconciler.reconcile_once()
    assert plane.job(job.id).status is JobStatus.CANCELLING

    plane.clock.advance(2)
    await plane.beat(w)
    assert job.id in plane.reconciler.reconcile_once()
    assert plane.job(job.id).status is JobStatus.CANCELLED
