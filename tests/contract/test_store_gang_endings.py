"""Gang endings when ranks end at different times: a rank that already succeeded is never run
again because another rank was preempted or lost afterwards, a gang that ended is never run again,
each rank's attempt is recorded once, and every job gets one terminal event."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainyard.model.states import TERMINAL, AttemptOutcome, JobStatus
from trainyard.store.sql import FinishReport, SqlStore

from .test_store import ALICE, gang_lease, spec, worker

INFRA = (AttemptOutcome.PREEMPTED, AttemptOutcome.LOST)


def report(store: SqlStore, lease: Any, outcome: AttemptOutcome, exit_code: int | None = 0) -> Any:
    res = store.report_finished(
        FinishReport(lease.job_id, lease.attempt, lease.lease_token, lease.worker_id, outcome, exit_code)
    )
    assert res.ok, res
    return res


def attempts_of(store: SqlStore, job_id: str) -> list[tuple[int, str | None]]:
    j = store.get_job(job_id)
    assert j is not None
    return [(a.number, a.outcome) for a in j.attempts]


def terminal_events(store: SqlStore, job_id: str) -> int:
    return sum(e.to_status in {s.value for s in TERMINAL} for e in store.job_events(job_id))


def succeeded_twice(store: SqlStore, ids: list[str]) -> list[str]:
    return [i for i in ids if Counter(o for _, o in attempts_of(store, i))["succeeded"] > 1]


def three_ranks(store: SqlStore) -> tuple[str, list[str], list[Any]]:
    ws = [worker(store, f"w{k}", hostname=f"host-{k}") for k in range(3)]
    gang = store.submit(ALICE, spec(replicas=3)).job
    leases = gang_lease(store, gang.id, ws, 3)
    for le in leases:
        assert store.report_started(le.job_id, le.attempt, le.lease_token, le.worker_id).ok
    return gang.id, ws, leases


def test_a_rank_preempted_after_another_succeeded_does_not_rerun_the_gang(store: SqlStore) -> None:
    gang, _ws, (head, r1, r2) = three_ranks(store)
    report(store, r1, AttemptOutcome.SUCCEEDED)
    # Rank 1 exited 0 after the last collective step; rank 2's reclaim now loses only its own tail.
    report(store, r2, AttemptOutcome.PREEMPTED, 143)
    assert store.gang_stops(gang) == []  # rank 0 is not stopped
    j = store.get_job(gang)
    assert j is not None and j.status is JobStatus.RUNNING
    assert store.pending_for_scheduling(time.time()) == []
    # Rank 0 decides: it succeeds, and the gang with it; no rank runs again.
    assert report(store, head, AttemptOutcome.SUCCEEDED).status is JobStatus.SUCCEEDED
    ids = [gang, r1.job_id, r2.job_id]
    for i in ids:
        j = store.get_job(i)
        assert j is not None and j.status is JobStatus.SUCCEEDED, (i, j and j.status)
        assert terminal_events(store, i) == 1
    assert attempts_of(store, r1.job_id) == [(1, "succeeded")]
    assert attempts_of(store, r2.job_id) == [(1, "preempted")]
    assert succeeded_twice(store, ids) == []


def test_a_rank_lost_after_another_succeeded_does_not_rerun_the_gang(store: SqlStore) -> None:
    gang, ws, (head, r1, r2) = three_ranks(store)
    report(store, r1, AttemptOutcome.SUCCEEDED)
    assert store.mark_worker_dead(ws[2]) == [r2.job_id]
    assert store.gang_stops(gang) == []
    assert report(store, head, AttemptOutcome.SUCCEEDED).status is JobStatus.SUCCEEDED
    assert attempts_of(store, r2.job_id) == [(1, "lost")]
    for i in (gang, r1.job_id, r2.job_id):
        assert terminal_events(store, i) == 1
        assert attempts_of(store, i)[-1][0] == 1


def test_a_rank_preempted_before_any_success_requeues_the_whole_gang(store: SqlStore) -> None:
    # All-or-nothing while the collective work runs: the lost step needs every rank again.
    gang, ws, (head, r1, r2) = three_ranks(store)
    report(store, r2, AttemptOutcome.PREEMPTED, 143)
    stops = store.gang_stops(gang)
    assert {(s.job_id, s.kind) for s in stops} == {(gang, "preempt"), (r1.job_id, "preempt")}
    report(store, r1, AttemptOutcome.PREEMPTED, 143)
    assert report(store, head, AttemptOutcome.PREEMPTED, 143).status is JobStatus.PENDING
    assert [p.id for p in store.pending_for_scheduling(time.time())] == [gang]
    again = gang_lease(store, gang, ws, 3)
    assert [le.attempt for le in again] == [2, 2, 2]


def test_a_rank_that_succeeded_with_rank_0_is_not_rerun_when_another_is_lost_later(store: SqlStore) -> None:
    gang, ws, (head, r1, r2) = three_ranks(store)
    report(store, r1, AttemptOutcome.SUCCEEDED)
    assert report(store, head, AttemptOutcome.SUCCEEDED).status is JobStatus.SUCCEEDED
    # Rank 2, told to stop, is lost before it reports: the gang stays ended, nothing is requeued.
    assert store.mark_worker_dead(ws[2]) == [r2.job_id]
    assert store.pending_for_scheduling(time.time()) == []
    for i in (gang, r1.job_id, r2.job_id):
        j = store.get_job(i)
        assert j is not None and j.status is JobStatus.SUCCEEDED
        assert terminal_events(store, i) == 1
    # A retried report of rank 2 changes nothing.
    res = store.report_finished(
        FinishReport(r2.job_id, 1, r2.lease_token, r2.worker_id, AttemptOutcome.PREEMPTED, 143)
    )
    assert not res.ok or res.message == "already recorded"
    # It was stopped because the gang had ended, so its attempt ends as stopped (as before).
    assert attempts_of(store, r2.job_id) == [(1, "cancelled")]


def test_a_rank_that_reports_start_and_end_at_once(store: SqlStore) -> None:
    # A very short rank's worker folds STARTED into its FINISHED report.
    ws = [worker(store, f"w{k}") for k in range(3)]
    gang = store.submit(ALICE, spec(replicas=3)).job
    head, r1, r2 = gang_lease(store, gang.id, ws, 3)
    store.report_started(head.job_id, head.attempt, head.lease_token, head.worker_id)
    report(store, r1, AttemptOutcome.SUCCEEDED)  # folded: SCHEDULED → RUNNING → idle
    m = store.get_job(r1.job_id)
    assert m is not None and m.status is JobStatus.PENDING and m.attempts[0].started_at is not None
    assert [e.to_status for e in store.job_events(r1.job_id)][-2:] == ["RUNNING", "PENDING"]
    assert store.gang_stops(gang.id) == []
    # A folded failure stops the gang (rank 0 flagged, rank 2 flagged) and the retry waits for all.
    report(store, r2, AttemptOutcome.FAILED, 3)
    stops = store.gang_stops(gang.id)
    assert [(s.job_id, s.kind) for s in stops] == [(gang.id, "cancel")]
    m2 = store.get_job(r2.job_id)
    assert m2 is not None and m2.status is JobStatus.PENDING and m2.attempts[0].started_at is not None
    assert report(store, head, AttemptOutcome.CANCELLED, -15).status is JobStatus.FAILED
    for i in (gang.id, r1.job_id, r2.job_id):
        j = store.get_job(i)
        assert j is not None and j.status is JobStatus.FAILED, (i, j and j.status)
        assert terminal_events(store, i) == 1


def test_rank_0_reporting_start_and_end_at_once_after_a_rank_was_preempted_or_lost(store: SqlStore) -> None:
    for outcome in (AttemptOutcome.PREEMPTED, AttemptOutcome.LOST):
        ws = [worker(store, f"{outcome.value}{k}") for k in range(2)]
        gang = store.submit(ALICE, spec(replicas=2)).job
        head, r1 = gang_lease(store, gang.id, ws, 2)
        if outcome is AttemptOutcome.LOST:
            store.mark_worker_dead(ws[1])
        else:
            report(store, r1, outcome, 143)
        # Rank 0 ran briefly and was stopped: its one report carries start and end (exit 1).
        assert report(store, head, AttemptOutcome.FAILED, 1).status is JobStatus.PENDING
        j = store.get_job(gang.id)
        assert j is not None and j.status is JobStatus.PENDING and j.lease_token is None
        assert j.attempts[0].outcome == outcome.value and j.attempts[0].started_at is not None
        moves = [(e.from_status, e.to_status) for e in store.job_events(gang.id)]
        # Every recorded move starts where the one before it ended.
        assert all(a[1] == b[0] for a, b in itertools.pairwise(moves)), moves
        assert moves[-1][1] == "PENDING" and ("RUNNING", outcome.value.upper()) in moves, moves
        again = gang_lease(store, gang.id, ws, 2) if outcome is AttemptOutcome.PREEMPTED else []
        assert outcome is AttemptOutcome.LOST or [le.attempt for le in again] == [2, 2]


ENDINGS = [AttemptOutcome.SUCCEEDED, AttemptOutcome.FAILED, AttemptOutcome.PREEMPTED, AttemptOutcome.LOST]
_serial = [0]


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    order=st.permutations([0, 1, 2]),
    endings=st.lists(st.sampled_from(ENDINGS), min_size=3, max_size=3),
)
def test_any_order_of_rank_endings_ends_each_row_once_and_never_reruns_a_finished_gang(
    store: SqlStore, order: list[int], endings: list[AttemptOutcome]
) -> None:
    """Ranks end in any order, each as drawn (a lost rank: its worker declared dead). Rank 0 decides;
    a member preempted or lost after another member succeeded does not requeue the gang."""
    _serial[0] += 1
    ws = [worker(store, f"h{_serial[0]}-{k}") for k in range(3)]
    gang = store.submit(ALICE, spec(replicas=3, retry={"max_attempts": 1})).job.id
    leases = gang_lease(store, gang, ws, 3)
    for le in leases:
        store.report_started(le.job_id, le.attempt, le.lease_token, le.worker_id)
    member_succeeded = False
    abort: AttemptOutcome | None = None
    for rank in order:
        outcome, le = endings[rank], leases[rank]
        if rank > 0 and outcome is AttemptOutcome.SUCCEEDED:
            member_succeeded = True
        elif rank > 0 and abort is None and not (member_succeeded and outcome in INFRA):
            abort = outcome
        elif rank == 0 and outcome is not AttemptOutcome.SUCCEEDED and abort is not None:
            outcome = abort  # rank 0 was stopped for another rank's ending, and ends as it did
        if endings[rank] is AttemptOutcome.LOST:
            store.mark_worker_dead(le.worker_id)
        else:
            res = store.report_finished(
                FinishReport(le.job_id, le.attempt, le.lease_token, le.worker_id, endings[rank], 0)
            )
            assert res.ok, res
        if rank == 0:
            head_outcome = outcome
    ids = [gang, f"{gang}-1", f"{gang}-2"]
    head = store.get_job(gang)
    assert head is not None
    if head_outcome is AttemptOutcome.PREEMPTED:
        # Requeued as a whole: every rank idle, the gang leasable again as attempt 2.
        assert head.status is JobStatus.PENDING
        assert [p.id for p in store.pending_for_scheduling(time.time()) if p.id == gang] == [gang]
        assert all(terminal_events(store, i) == 0 for i in ids)
    else:
        expected = {
            AttemptOutcome.SUCCEEDED: JobStatus.SUCCEEDED,
            AttemptOutcome.FAILED: JobStatus.FAILED,
            AttemptOutcome.LOST: JobStatus.FAILED,  # its one try used (a lost attempt is not preempted)
        }[head_outcome]
        assert head.status is expected, (order, endings, head.status)
        assert gang not in {p.id for p in store.pending_for_scheduling(time.time())}
        for i in ids:
            j = store.get_job(i)
            assert j is not None and j.status is expected, (i, j and j.status)
            assert terminal_events(store, i) == 1
    for i in ids:
        # Each rank ran attempt 1 once, recorded once.
        assert [n for n, _ in attempts_of(store, i)] == [1]
