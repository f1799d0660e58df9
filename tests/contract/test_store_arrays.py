"""The store contract for job arrays and dependencies, on SQLite and PostgreSQL: an array's parent and
its task rows, the parent's status following its tasks, cancels reaching every task, pages of tasks,
and jobs that wait for others, are released, or end when a dependency can never be met."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.contract.test_store import ALICE, BOB, finish, lease_one, spec, worker
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.store.sql import Conflict, FinishReport, JobFilter, SqlStore


def array(store: SqlStore, indices: str = "0-4", parallelism: int | None = None, **kw: Any) -> str:
    body: dict[str, Any] = {"indices": indices}
    if parallelism is not None:
        body["parallelism"] = parallelism
    job = store.submit(ALICE, spec(command=["train", "--trial", "{index}"], array=body, **kw)).job
    return job.id


def run(store: SqlStore, job_id: str, wid: str, outcome: AttemptOutcome, code: int = 0) -> JobStatus | None:
    attempt, token = lease_one(store, job_id, wid)
    assert store.report_started(job_id, attempt, token, wid).ok
    return finish(store, job_id, attempt, token, wid, outcome, code)


def status(store: SqlStore, job_id: str) -> JobStatus:
    job = store.get_job(job_id)
    assert job is not None
    return job.status


def test_an_array_is_a_parent_and_one_task_row_per_index(store: SqlStore) -> None:
    parent = store.submit(
        ALICE,
        spec(command=["train", "--trial", "{index}"], array={"indices": "1,3,5-9:2", "parallelism": 2}),
    ).job
    assert parent.is_array and parent.array_tasks == 5 and parent.status is JobStatus.PENDING
    assert parent.array_counts == {"PENDING": 5}
    tasks, cursor = store.array_tasks(parent.id)
    assert cursor is None
    assert [t.id for t in tasks] == [f"{parent.id}-{i}" for i in (1, 3, 5, 7, 9)]
    assert [t.spec["command"] for t in tasks][:2] == [["train", "--trial", "1"], ["train", "--trial", "3"]]
    assert all(t.array_id == parent.id and "array" not in t.spec for t in tasks)
    # The scheduler sees the tasks, with the array's cap, never the parent; the list shows the parent.
    pending = store.pending_for_scheduling(time.time() + 1)
    assert sorted(p.id for p in pending) == sorted(t.id for t in tasks)
    assert {(p.array_id, p.array_limit) for p in pending} == {(parent.id, 2)}
    listed, _ = store.list_jobs(JobFilter())
    assert [j.id for j in listed] == [parent.id] and listed[0].array_counts == {"PENDING": 5}
    assert store.count_by_status() == {"PENDING": 5}
    got = store.get_job(parent.id)
    assert got is not None and got.array_counts == {"PENDING": 5}
    # Only the parent's submission is an event (a task's first is its lease).
    assert [e.type for e in store.job_events(parent.id)] == ["submitted"]
    assert store.job_events(tasks[0].id) == []


def test_ten_thousand_tasks_in_one_submission(store: SqlStore) -> None:
    # Its speed is the bench's array_submit row, not a timed assertion on a shared machine.
    parent = array(store, "0-9999")
    got = store.get_job(parent)
    assert got is not None and got.array_counts == {"PENDING": 10_000}


def test_the_parent_follows_its_tasks_to_success(store: SqlStore) -> None:
    wid = worker(store)
    parent = array(store, "0-2")
    ids = [f"{parent}-{i}" for i in range(3)]
    attempt, token = lease_one(store, ids[0], wid)
    assert status(store, parent) is JobStatus.PENDING  # leased is not running yet
    store.report_started(ids[0], attempt, token, wid)
    assert status(store, parent) is JobStatus.RUNNING
    finish(store, ids[0], attempt, token, wid, AttemptOutcome.SUCCEEDED)
    assert status(store, parent) is JobStatus.RUNNING
    for t in ids[1:]:
        run(store, t, wid, AttemptOutcome.SUCCEEDED)
    done = store.get_job(parent)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.finished_at is not None
    assert done.array_counts == {"SUCCEEDED": 3}
    assert [e.to_status for e in store.job_events(parent)] == ["PENDING", "RUNNING", "SUCCEEDED"]


def test_a_failed_task_fails_the_array_once_every_task_ended(store: SqlStore) -> None:
    wid = worker(store)
    parent = array(store, "0-1")
    assert run(store, f"{parent}-0", wid, AttemptOutcome.FAILED, 1) is JobStatus.FAILED
    assert status(store, parent) is JobStatus.RUNNING
    run(store, f"{parent}-1", wid, AttemptOutcome.SUCCEEDED)
    assert status(store, parent) is JobStatus.FAILED


def test_each_task_is_retried_on_its_own(store: SqlStore) -> None:
    wid = worker(store)
    parent = array(store, "0-1", retry={"max_attempts": 2, "on": ["failed"]})
    task = f"{parent}-0"
    assert run(store, task, wid, AttemptOutcome.FAILED, 1) is JobStatus.PENDING
    assert status(store, parent) is JobStatus.RUNNING
    assert run(store, task, wid, AttemptOutcome.SUCCEEDED) is JobStatus.SUCCEEDED
    got = store.get_job(task)
    assert got is not None and got.attempt == 2
    other = store.get_job(f"{parent}-1")
    assert other is not None and other.attempt == 0


def test_cancel_of_the_parent_reaches_every_task_not_finished(store: SqlStore) -> None:
    wid = worker(store)
    parent = array(store, "0-3")
    run(store, f"{parent}-0", wid, AttemptOutcome.SUCCEEDED)
    attempt, token = lease_one(store, f"{parent}-1", wid)
    store.report_started(f"{parent}-1", attempt, token, wid)
    cancelled = store.cancel(parent, "alice")
    assert cancelled.status is JobStatus.CANCELLING
    assert cancelled.array_counts == {"SUCCEEDED": 1, "CANCELLING": 1, "CANCELLED": 2}
    assert [t.id for t in store.stopping_tasks(parent)] == [f"{parent}-1"]
    assert [c.kind for c in store.worker_commands(wid, [(f"{parent}-1", attempt, token)])] == ["cancel"]
    assert store.pending_for_scheduling(time.time() + 1) == []
    finish(store, f"{parent}-1", attempt, token, wid, AttemptOutcome.FAILED, -15)
    done = store.get_job(parent)
    assert done is not None and done.status is JobStatus.CANCELLED and done.reason == "cancelled by alice"
    assert store.cancel(parent, "alice").status is JobStatus.CANCELLED  # idempotent


def test_cancel_of_a_pending_array_ends_it_at_once(store: SqlStore) -> None:
    parent = array(store, "0-99")
    assert store.cancel(parent, "alice").status is JobStatus.CANCELLED
    tasks, _ = store.array_tasks(parent, limit=200)
    assert {t.status for t in tasks} == {JobStatus.CANCELLED}


def test_a_cancelled_task_alone_leaves_the_rest_running(store: SqlStore) -> None:
    wid = worker(store)
    parent = array(store, "0-1")
    assert store.cancel(f"{parent}-0", "alice").status is JobStatus.CANCELLED
    assert status(store, parent) is JobStatus.PENDING
    run(store, f"{parent}-1", wid, AttemptOutcome.SUCCEEDED)
    assert status(store, parent) is JobStatus.CANCELLED  # a success and a cancellation


def test_restart_takes_a_task_not_the_parent(store: SqlStore) -> None:
    wid = worker(store)
    parent = array(store, "0")
    run(store, f"{parent}-0", wid, AttemptOutcome.FAILED, 1)
    assert status(store, parent) is JobStatus.FAILED
    with pytest.raises(Conflict, match="is an array"):
        store.restart(parent, "alice")
    store.restart(f"{parent}-0", "alice")
    assert status(store, parent) is JobStatus.RUNNING  # open again
    run(store, f"{parent}-0", wid, AttemptOutcome.SUCCEEDED)
    assert status(store, parent) is JobStatus.SUCCEEDED


def test_tasks_come_in_pages_and_by_status(store: SqlStore) -> None:
    wid = worker(store)
    parent = array(store, "0-9")
    run(store, f"{parent}-4", wid, AttemptOutcome.SUCCEEDED)
    seen: list[int] = []
    cursor = None
    while True:
        page, cursor = store.array_tasks(parent, limit=4, cursor=cursor)
        seen.extend(t.array_index or 0 for t in page)
        if cursor is None:
            break
    assert seen == list(range(10))
    done, _ = store.array_tasks(parent, statuses=["SUCCEEDED"])
    assert [t.id for t in done] == [f"{parent}-4"]
    with pytest.raises(ValueError, match="cursor"):
        store.array_tasks(parent, cursor="bogus")


def test_an_idempotent_replay_of_an_array_returns_the_parent(store: SqlStore) -> None:
    body = spec(command=["x"], array={"indices": "0-2"})
    first = store.submit(ALICE, body, "key-1")
    again = store.submit(ALICE, body, "key-1")
    assert first.created and not again.created and again.job.id == first.job.id
    assert again.job.array_counts == {"PENDING": 3}


# ---- dependencies ----------------------------------------------------------------------------------


def waits(store: SqlStore, job_id: str) -> str | None:
    job = store.get_job(job_id)
    assert job is not None
    return job.pending_reason if job.status is JobStatus.PENDING and job.awaiting_dependencies else None


def pending_ids(store: SqlStore) -> set[str]:
    return {p.id for p in store.pending_for_scheduling(time.time() + 1)}


def test_a_dependent_job_waits_and_is_released_when_its_dependency_succeeds(store: SqlStore) -> None:
    wid = worker(store)
    first = store.submit(ALICE, spec()).job.id
    then = store.submit(ALICE, spec(depends_on=[{"job": first}])).job.id
    assert then not in pending_ids(store)
    store.resolve_dependencies()
    assert waits(store, then) == f"waiting for job {first} (PENDING)"
    attempt, token = lease_one(store, first, wid)
    store.report_started(first, attempt, token, wid)
    assert store.resolve_dependencies().waiting == {then: f"waiting for job {first} (RUNNING)"}
    assert store.resolve_dependencies().waiting == {}  # written once
    finish(store, first, attempt, token, wid, AttemptOutcome.SUCCEEDED)
    assert store.resolve_dependencies().released == [then]
    assert then in pending_ids(store)
    got = store.get_job(then)
    assert got is not None and got.pending_reason is None and not got.awaiting_dependencies


@pytest.mark.parametrize(
    ("condition", "outcome", "code", "released"),
    [
        ("succeeded", AttemptOutcome.SUCCEEDED, 0, True),
        ("succeeded", AttemptOutcome.FAILED, 1, False),
        ("failed", AttemptOutcome.FAILED, 1, True),
        ("failed", AttemptOutcome.SUCCEEDED, 0, False),
        ("finished", AttemptOutcome.FAILED, 1, True),
        ("finished", AttemptOutcome.SUCCEEDED, 0, True),
    ],
)
def test_every_condition(
    store: SqlStore, condition: str, outcome: AttemptOutcome, code: int, released: bool
) -> None:
    wid = worker(store)
    first = store.submit(ALICE, spec(retry={"max_attempts": 1})).job.id
    then = store.submit(ALICE, spec(depends_on=[{"job": first, "condition": condition}])).job.id
    final = run(store, first, wid, outcome, code)
    result = store.resolve_dependencies()
    if released:
        assert result.released == [then] and status(store, then) is JobStatus.PENDING
    else:
        reason = f"dependency never satisfied: job {first} ended {final}"
        assert result.failed == {then: reason}
        got = store.get_job(then)
        assert got is not None and got.status is JobStatus.FAILED and got.reason == reason
        assert [e.to_status for e in store.job_events(then)] == ["PENDING", "FAILED"]


def test_a_cancelled_dependency_can_never_be_met_by_success(store: SqlStore) -> None:
    first = store.submit(ALICE, spec()).job.id
    then = store.submit(ALICE, spec(depends_on=[{"job": first}])).job.id
    store.cancel(first, "alice")
    assert store.resolve_dependencies().failed == {
        then: f"dependency never satisfied: job {first} ended CANCELLED"
    }


def test_all_dependencies_must_be_met(store: SqlStore) -> None:
    wid = worker(store)
    a, b = store.submit(ALICE, spec()).job.id, store.submit(ALICE, spec()).job.id
    then = store.submit(ALICE, spec(depends_on=[{"job": a}, {"job": b, "condition": "finished"}])).job.id
    run(store, a, wid, AttemptOutcome.SUCCEEDED)
    store.resolve_dependencies()
    assert waits(store, then) == f"waiting for job {b} (PENDING)"
    run(store, b, wid, AttemptOutcome.FAILED, 1)
    assert store.resolve_dependencies().released == [then]


def test_an_array_as_a_dependency_needs_every_task(store: SqlStore) -> None:
    wid = worker(store)
    sweep = array(store, "0-2")
    evaluate = store.submit(ALICE, spec(depends_on=[{"job": sweep}])).job.id
    run(store, f"{sweep}-0", wid, AttemptOutcome.SUCCEEDED)
    run(store, f"{sweep}-1", wid, AttemptOutcome.SUCCEEDED)
    store.resolve_dependencies()
    assert waits(store, evaluate) == f"waiting for job {sweep} (RUNNING)"
    run(store, f"{sweep}-2", wid, AttemptOutcome.SUCCEEDED)
    assert store.resolve_dependencies().released == [evaluate]


def test_a_failed_task_ends_a_dependent_job_before_the_array_ends(store: SqlStore) -> None:
    wid = worker(store)
    sweep = array(store, "0-2", retry={"max_attempts": 1})
    evaluate = store.submit(ALICE, spec(depends_on=[{"job": sweep}])).job.id
    run(store, f"{sweep}-1", wid, AttemptOutcome.FAILED, 2)
    assert store.resolve_dependencies().failed == {
        evaluate: f"dependency never satisfied: job {sweep} has tasks that ended 1 FAILED"
    }


def test_an_array_waits_as_a_whole_and_is_released_as_one(store: SqlStore) -> None:
    wid = worker(store)
    train = store.submit(ALICE, spec()).job.id
    sweep = array(store, "0-3", depends_on=[{"job": train}])
    assert pending_ids(store) == {train}
    store.resolve_dependencies()
    tasks, _ = store.array_tasks(sweep)
    assert {t.pending_reason for t in tasks} == {f"waiting for job {train} (PENDING)"}
    assert waits(store, sweep) == f"waiting for job {train} (PENDING)"
    run(store, train, wid, AttemptOutcome.SUCCEEDED)
    assert store.resolve_dependencies().released == [sweep]
    assert pending_ids(store) == {f"{sweep}-{i}" for i in range(4)}


def test_an_array_whose_dependency_fails_ends_failed_with_every_task(store: SqlStore) -> None:
    wid = worker(store)
    train = store.submit(ALICE, spec(retry={"max_attempts": 1})).job.id
    sweep = array(store, "0-3", depends_on=[{"job": train}])
    run(store, train, wid, AttemptOutcome.FAILED, 1)
    reason = f"dependency never satisfied: job {train} ended FAILED"
    assert store.resolve_dependencies().failed == {sweep: reason}
    done = store.get_job(sweep)
    assert done is not None and done.status is JobStatus.FAILED and done.reason == reason
    assert done.array_counts == {"FAILED": 4}


def test_a_restarted_job_looks_at_its_dependencies_again(store: SqlStore) -> None:
    wid = worker(store)
    first = store.submit(ALICE, spec(retry={"max_attempts": 1})).job.id
    then = store.submit(ALICE, spec(depends_on=[{"job": first}])).job.id
    run(store, first, wid, AttemptOutcome.FAILED, 1)
    store.resolve_dependencies()
    assert status(store, then) is JobStatus.FAILED
    store.restart(first, "alice")
    run(store, first, wid, AttemptOutcome.SUCCEEDED)
    store.restart(then, "alice")
    assert then not in pending_ids(store)
    assert store.resolve_dependencies().released == [then]


def test_dependency_artifacts_are_those_of_each_jobs_latest_attempt(store: SqlStore) -> None:
    wid = worker(store)
    train = store.submit(ALICE, spec()).job.id
    sweep = array(store, "0-1")
    arts = [("model.pt", 3, "a" * 64, "k/model.pt")]
    for job_id, files in ((train, arts), (f"{sweep}-0", [("m.json", 2, "b" * 64, "k/m0")])):
        attempt, token = lease_one(store, job_id, wid)
        rep = FinishReport(job_id, attempt, token, wid, AttemptOutcome.SUCCEEDED, 0, artifacts=files)
        assert store.report_finished(rep).ok
    got = store.dependency_artifacts([{"job": sweep}, {"job": train}])
    assert [(job, r.path, r.sha256) for job, r in got] == [
        (f"{sweep}-0", "m.json", "b" * 64),
        (train, "model.pt", "a" * 64),
    ]
    assert store.dependency_artifacts([{"job": BOB.name}]) == []
