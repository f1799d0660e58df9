"""Store rules behind preemption and drains, on every store implementation."""

from __future__ import annotations

from tests.contract.test_store import ALICE, finish, lease_one, spec, worker
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.store.sql import SqlStore


def _preempt(store: SqlStore, job_id: str, wid: str) -> JobStatus | None:
    attempt, token = lease_one(store, job_id, wid)
    store.report_started(job_id, attempt, token, wid)
    return finish(store, job_id, attempt, token, wid, AttemptOutcome.PREEMPTED, 143)


def test_preemptions_are_capped(store: SqlStore) -> None:
    store.max_preemptions = 2
    wid = worker(store)
    job = store.submit(ALICE, spec(retry={"max_attempts": 2}, preemptible=True)).job
    # The free ones: back to the queue, no try used; at the cap the scheduler may not evict it again.
    assert _preempt(store, job.id, wid) is JobStatus.PENDING
    j = store.get_job(job.id)
    assert j is not None and j.tries == 0
    assert _preempt(store, job.id, wid) is JobStatus.PENDING
    j = store.get_job(job.id)
    assert j is not None and j.tries == 0
    attempt, token = lease_one(store, job.id, wid)
    store.report_started(job.id, attempt, token, wid)
    (running,) = store.running_for_scheduling()
    assert running.preemptible is False
    # Past the cap a preemption is an infrastructure failure: it uses a try ...
    assert finish(store, job.id, attempt, token, wid, AttemptOutcome.PREEMPTED, 143) is JobStatus.PENDING
    j = store.get_job(job.id)
    assert j is not None and j.tries == 1 and "uses a retry" in (j.attempts[-1].reason or "")
    # ... and when the tries are spent, the job fails instead of cycling forever.
    assert _preempt(store, job.id, wid) is JobStatus.FAILED


def test_drain_marks_the_worker_and_a_restart_clears_it(store: SqlStore) -> None:
    wid = worker(store, "w1")
    w = store.drain_worker("w1", 1000.0)
    assert w is not None and w.id == wid and w.status == "DRAINING" and w.drain_deadline == 1000.0
    # Draining again can only bring the deadline forward.
    w = store.drain_worker(wid, 2000.0)
    assert w is not None and w.drain_deadline == 1000.0
    w = store.drain_worker(wid, 10.0)
    assert w is not None and w.drain_deadline == 10.0
    assert store.drain_worker("nobody", None) is None
    worker(store, "w1")  # the agent restarted and registered again
    w = store.get_worker(wid)
    assert w is not None and w.status == "ALIVE" and w.drain_deadline is None
