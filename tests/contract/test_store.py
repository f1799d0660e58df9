"""The store contract: the same behaviour on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from trainyard.model.records import LogChunk, User
from trainyard.model.spec import JobSpec
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.store.schema import api_tokens, outbox
from trainyard.store.sql import (
    Conflict,
    FinishReport,
    IdempotencyConflict,
    JobFilter,
    NotFound,
    Placement,
    SqlStore,
)

ALICE = User("alice", "vision", "user")
BOB = User("bob", "nlp", "user")


def spec(**kw: object) -> JobSpec:
    return JobSpec.model_validate({"command": ["python", "train.py"], **kw})


def worker(store: SqlStore, name: str = "w1", **kw: object) -> str:
    args: dict[str, object] = dict(
        name=name,
        hostname=name,
        pool="default",
        region=None,
        cpu=8,
        memory=32 << 30,
        gpu=0,
        gpu_type=None,
        labels={},
        version="t",
    )
    args.update(kw)
    w, _ = store.register_worker(**args)  # type: ignore[arg-type]
    return w.id


def lease_one(store: SqlStore, job_id: str, worker_id: str) -> tuple[int, str]:
    job = store.get_job(job_id)
    assert job is not None
    leases = store.lease([Placement(job_id, worker_id, (), job.attempt)])
    assert len(leases) == 1
    return leases[0].attempt, leases[0].lease_token


def finish(
    store: SqlStore,
    job_id: str,
    attempt: int,
    token: str,
    wid: str,
    outcome: AttemptOutcome,
    exit_code: int | None = 0,
) -> JobStatus | None:
    res = store.report_finished(FinishReport(job_id, attempt, token, wid, outcome, exit_code))
    assert res.ok
    return res.status


def test_submit_get_and_events(store: SqlStore) -> None:
    job = store.submit(ALICE, spec(name="r50")).job
    assert job.status is JobStatus.PENDING and job.team == "vision" and job.user == "alice"
    assert job.spec["command"] == ["python", "train.py"] and job.spec["team"] == "vision"
    got = store.get_job(job.id)
    assert got is not None and got.id == job.id and got.attempts == []
    events = store.job_events(job.id)
    assert [e.type for e in events] == ["submitted"] and events[0].to_status == "PENDING"
    assert store.get_job("j-nope") is None


def test_idempotency_replay_and_conflict(store: SqlStore) -> None:
    a = store.submit(ALICE, spec(), "key-1")
    b = store.submit(ALICE, spec(), "key-1")
    assert a.created and not b.created and a.job.id == b.job.id
    with pytest.raises(IdempotencyConflict):
        store.submit(ALICE, spec(name="other"), "key-1")
    # Keys are per user.
    c = store.submit(BOB, spec(), "key-1")
    assert c.created and c.job.id != a.job.id


def test_idempotency_under_concurrency(store: SqlStore) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            ids.append(store.submit(ALICE, spec(), "same").job.id)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(ids)) == 1
    jobs, _ = store.list_jobs(JobFilter())
    assert len(jobs) == 1


def test_list_newest_first_filters_and_cursor(store: SqlStore) -> None:
    made = [store.submit(ALICE if i % 2 else BOB, spec(name=f"j{i}")).job.id for i in range(7)]
    page1, cur = store.list_jobs(JobFilter(), limit=3)
    assert [j.id for j in page1] == made[::-1][:3] and cur
    page2, cur2 = store.list_jobs(JobFilter(), limit=3, cursor=cur)
    page3, cur3 = store.list_jobs(JobFilter(), limit=3, cursor=cur2)
    assert [j.id for j in page1 + page2 + page3] == made[::-1] and cur3 is None
    mine, _ = store.list_jobs(JobFilter(visible_team="vision"))
    assert {j.team for j in mine} == {"vision"} and len(mine) == 3
    named, _ = store.list_jobs(JobFilter(name="j4"))
    assert [j.id for j in named] == [made[4]]
    with pytest.raises(ValueError):
        store.list_jobs(JobFilter(), cursor="garbage!!")


def test_full_lifecycle_and_stale_reports(store: SqlStore) -> None:
    wid = worker(store)
    job = store.submit(ALICE, spec()).job
    attempt, token = lease_one(store, job.id, wid)
    assert store.report_started(job.id, attempt, "wrong-token", wid).ok is False
    assert store.report_started(job.id, attempt, token, wid).status is JobStatus.RUNNING
    assert store.report_started(job.id, attempt, token, wid).ok  # repeated report is harmless
    assert (
        store.report_finished(FinishReport(job.id, attempt, "old", wid, AttemptOutcome.SUCCEEDED, 0)).ok
        is False
    )
    assert finish(store, job.id, attempt, token, wid, AttemptOutcome.SUCCEEDED) is JobStatus.SUCCEEDED
    # The same report again (a retry after a lost answer) is acknowledged, not applied twice.
    again = store.report_finished(FinishReport(job.id, attempt, token, wid, AttemptOutcome.SUCCEEDED, 0))
    assert again.ok
    done = store.get_job(job.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.exit_code == 0
    assert [e.type for e in store.job_events(job.id)] == ["submitted", "scheduled", "running", "succeeded"]


@pytest.mark.parametrize("outcome", [AttemptOutcome.SUCCEEDED, AttemptOutcome.FAILED])
def test_finish_without_a_started_report_records_the_start(store: SqlStore, outcome: AttemptOutcome) -> None:
    # A run of a few milliseconds is reported once, as finished: the start is recorded in the same
    # transaction (and the retry path of a failure too), with a complete event chain.
    wid = worker(store)
    job = store.submit(ALICE, spec(retry={"max_attempts": 2, "on": ["exit:1"]})).job
    attempt, token = lease_one(store, job.id, wid)
    final = finish(
        store, job.id, attempt, token, wid, outcome, 0 if outcome is AttemptOutcome.SUCCEEDED else 1
    )
    done = store.get_job(job.id)
    assert done is not None and done.status is final and done.started_at is not None
    assert done.attempts[0].started_at is not None and done.attempts[0].finished_at is not None
    events = store.job_events(job.id)
    chain = [(e.from_status, e.to_status) for e in events]
    expected_end = "SUCCEEDED" if outcome is AttemptOutcome.SUCCEEDED else "PENDING"
    assert chain == [
        (None, "PENDING"),
        ("PENDING", "SCHEDULED"),
        ("SCHEDULED", "RUNNING"),
        ("RUNNING", expected_end),
    ]


def test_lease_is_guarded(store: SqlStore) -> None:
    w1, w2 = worker(store, "w1"), worker(store, "w2")
    job = store.submit(ALICE, spec()).job
    first = store.lease([Placement(job.id, w1, (), 0)])
    second = store.lease([Placement(job.id, w2, (), 0)])
    assert len(first) == 1 and second == []
    j = store.get_job(job.id)
    assert j is not None and j.worker_id == w1 and len(j.attempts) == 1


def test_concurrent_leases_one_winner(store: SqlStore) -> None:
    workers = [worker(store, f"w{i}") for i in range(4)]
    job = store.submit(ALICE, spec()).job
    won: list[int] = []

    def go(w: str) -> None:
        won.append(len(store.lease([Placement(job.id, w, (), 0)])))

    threads = [threading.Thread(target=go, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [0, 0, 0, 1]


def test_cancel_pending_running_and_finished(store: SqlStore) -> None:
    wid = worker(store)
    pending = store.submit(ALICE, spec()).job
    assert store.cancel(pending.id, "alice").status is JobStatus.CANCELLED
    running = store.submit(ALICE, spec()).job
    attempt, token = lease_one(store, running.id, wid)
    store.report_started(running.id, attempt, token, wid)
    assert store.cancel(running.id, "alice").status is JobStatus.CANCELLING
    assert store.cancel(running.id, "alice").status is JobStatus.CANCELLING  # idempotent
    cmds = store.worker_commands(wid, [(running.id, attempt, token)])
    assert [c.kind for c in cmds] == ["cancel"]
    assert finish(store, running.id, attempt, token, wid, AttemptOutcome.FAILED, -15) is JobStatus.CANCELLED
    assert store.cancel(running.id, "alice").status is JobStatus.CANCELLED
    with pytest.raises(NotFound):
        store.cancel("jnope", "alice")


def test_restart_only_finished(store: SqlStore) -> None:
    wid = worker(store)
    job = store.submit(ALICE, spec()).job
    with pytest.raises(Conflict):
        store.restart(job.id, "alice")
    attempt, token = lease_one(store, job.id, wid)
    finish(store, job.id, attempt, token, wid, AttemptOutcome.FAILED, 1)
    again = store.restart(job.id, "alice")
    assert again.status is JobStatus.PENDING and again.exit_code is None
    attempt2, token2 = lease_one(store, job.id, wid)
    assert attempt2 == 2 and token2 != token


def test_dead_worker_requeues_then_fails_when_retries_run_out(store: SqlStore) -> None:
    job = store.submit(ALICE, spec(retry={"max_attempts": 2})).job
    for n in (1, 2):
        wid = worker(store, f"w{n}")
        attempt, token = lease_one(store, job.id, wid)
        store.report_started(job.id, attempt, token, wid)
        assert store.mark_worker_dead(wid) == [job.id]
        assert store.mark_worker_dead(wid) == []  # once
        # The dead worker's late report is refused.
        late = store.report_finished(FinishReport(job.id, attempt, token, wid, AttemptOutcome.SUCCEEDED, 0))
        assert late.ok is False
    final = store.get_job(job.id)
    assert final is not None and final.status is JobStatus.FAILED
    assert [a.status for a in final.attempts] == ["LOST", "LOST"]
    types = [e.type for e in store.job_events(job.id)]
    assert types.count("lost") == 2 and "retrying" in types and types[-1] == "failed"


def test_user_failure_retry_policy(store: SqlStore) -> None:
    wid = worker(store)
    job = store.submit(ALICE, spec(retry={"max_attempts": 3, "on": ["exit:3"]})).job
    attempt, token = lease_one(store, job.id, wid)
    assert finish(store, job.id, attempt, token, wid, AttemptOutcome.FAILED, 3) is JobStatus.PENDING
    attempt, token = lease_one(store, job.id, wid)
    assert finish(store, job.id, attempt, token, wid, AttemptOutcome.FAILED, 4) is JobStatus.FAILED


def test_backoff_delays_the_retry(store: SqlStore) -> None:
    wid = worker(store)
    job = store.submit(
        ALICE, spec(retry={"max_attempts": 3, "on": ["failed"], "backoff": "1h", "max_backoff": "2h"})
    ).job
    attempt, token = lease_one(store, job.id, wid)
    finish(store, job.id, attempt, token, wid, AttemptOutcome.FAILED, 1)
    j = store.get_job(job.id)
    assert j is not None and j.not_before is not None and j.not_before > j.updated_at + 1700
    assert store.pending_for_scheduling(now=j.updated_at) == []
    assert store.lease([Placement(job.id, wid, (), j.attempt)]) == []


def test_preemption_requeues_without_using_a_try(store: SqlStore) -> None:
    wid = worker(store)
    job = store.submit(ALICE, spec(retry={"max_attempts": 1})).job
    for _ in range(3):
        attempt, token = lease_one(store, job.id, wid)
        store.report_started(job.id, attempt, token, wid)
        assert finish(store, job.id, attempt, token, wid, AttemptOutcome.PREEMPTED, 143) is JobStatus.PENDING
    j = store.get_job(job.id)
    assert j is not None and j.tries == 0 and [a.status for a in j.attempts] == ["PREEMPTED"] * 3


def test_preempted_and_lost_jobs_keep_their_place_in_the_queue(store: SqlStore) -> None:
    """As Slurm and Kueue requeue evicted work: a preempted or lost job keeps its ``queued_at`` and
    comes before a job of its team and priority submitted while it ran; a retried failure goes to
    the back."""
    now = [1000.0]
    store.clock = lambda: now[0]
    job = store.submit(ALICE, spec(retry={"max_attempts": 3, "on": ["infra", "failed"]})).job
    wid = worker(store, "w1")

    def run(worker_id: str, at: float) -> tuple[int, str]:
        now[0] = at
        attempt, token = lease_one(store, job.id, worker_id)
        store.report_started(job.id, attempt, token, worker_id)
        return attempt, token

    def queue() -> list[str]:
        return [p.id for p in store.pending_for_scheduling(now[0])]

    attempt, token = run(wid, 1010.0)
    now[0] = 1020.0
    later = store.submit(ALICE, spec(name="later")).job
    now[0] = 1030.0
    assert finish(store, job.id, attempt, token, wid, AttemptOutcome.PREEMPTED, 143) is JobStatus.PENDING
    j = store.get_job(job.id)
    assert j is not None and j.queued_at == 1000.0 and j.attempts[-1].status == "PREEMPTED"
    assert queue() == [job.id, later.id]

    run(wid, 1040.0)
    now[0] = 1050.0
    assert store.mark_worker_dead(wid) == [job.id]
    j = store.get_job(job.id)
    assert j is not None and j.status is JobStatus.PENDING and j.attempts[-1].status == "LOST"
    assert j.queued_at == 1000.0 and queue() == [job.id, later.id]

    wid2 = worker(store, "w2")
    attempt, token = run(wid2, 1060.0)
    now[0] = 1070.0
    assert finish(store, job.id, attempt, token, wid2, AttemptOutcome.FAILED, 1) is JobStatus.PENDING
    j = store.get_job(job.id)
    assert j is not None and j.queued_at == 1070.0 and queue() == [later.id, job.id]


def test_worker_commands_kill_stale(store: SqlStore) -> None:
    wid = worker(store)
    job = store.submit(ALICE, spec()).job
    attempt, token = lease_one(store, job.id, wid)
    cmds = store.worker_commands(wid, [(job.id, attempt, "not-the-token"), ("jgone", 1, "x")])
    assert sorted(c.kind for c in cmds) == ["kill_stale", "kill_stale"]
    assert store.worker_commands(wid, [(job.id, attempt, token)]) == []


def test_reregistering_worker_loses_its_attempts(store: SqlStore) -> None:
    wid = worker(store)
    job = store.submit(ALICE, spec()).job
    lease_one(store, job.id, wid)
    wid2 = worker(store)  # same name: the agent restarted
    assert wid2 == wid
    j = store.get_job(job.id)
    assert j is not None and j.status is JobStatus.PENDING and j.attempts[0].status == "LOST"


def test_overdue_and_stuck_cancel(store: SqlStore) -> None:
    wid = worker(store)
    job = store.submit(ALICE, spec(max_runtime="1s")).job
    attempt, token = lease_one(store, job.id, wid)
    store.report_started(job.id, attempt, token, wid)
    j = store.get_job(job.id)
    assert j is not None and j.started_at is not None
    assert store.expire_overdue(j.started_at + 0.5, grace=0) == []
    assert store.expire_overdue(j.started_at + 5, grace=1) == [job.id]
    assert store.get_job(job.id).status is JobStatus.TIMED_OUT  # type: ignore[union-attr]
    job2 = store.submit(ALICE, spec()).job
    lease_one(store, job2.id, wid)
    store.cancel(job2.id, "alice")
    j2 = store.get_job(job2.id)
    assert j2 is not None
    assert store.finish_stuck_cancels(j2.updated_at + 1, after=60) == []
    assert store.finish_stuck_cancels(j2.updated_at + 120, after=60) == [job2.id]
    assert store.get_job(job2.id).status is JobStatus.CANCELLED  # type: ignore[union-attr]


def test_logs_and_artifacts_are_indexed(store: SqlStore) -> None:
    wid = worker(store)
    job = store.submit(ALICE, spec()).job
    attempt, token = lease_one(store, job.id, wid)
    key = f"jobs/{job.id}/{attempt}/logs/00000000.log.gz"
    assert not store.add_log_chunk(LogChunk(job.id, attempt, 0, 0, 10, key, 5), "bad")
    assert store.add_log_chunk(LogChunk(job.id, attempt, 0, 0, 10, key, 5), token)
    assert store.add_log_chunk(LogChunk(job.id, attempt, 0, 0, 10, key, 5), token)  # idempotent
    assert [(c.start_offset, c.end_offset) for c in store.log_chunks(job.id, attempt)] == [(0, 10)]
    store.report_finished(
        FinishReport(
            job.id,
            attempt,
            token,
            wid,
            AttemptOutcome.FAILED,
            2,
            artifacts=(("model.npz", 12, "ab" * 32, f"jobs/{job.id}/1/artifacts/model.npz"),),
            stderr_tail="Traceback: boom",
        )
    )
    arts = store.artifacts(job.id)
    assert [(a.path, a.size) for a in arts] == [("model.npz", 12)]
    j = store.get_job(job.id)
    assert j is not None and j.attempts[0].stderr_tail == "Traceback: boom"


def test_outbox_has_one_row_per_event(store: SqlStore) -> None:
    wid = worker(store)
    job = store.submit(ALICE, spec()).job
    lease_one(store, job.id, wid)
    rows = store.outbox_unsent()
    assert [r.topic for r in rows] == ["job.submitted", "job.events"]
    assert {r.payload["schema"] for r in rows} == {1} and len({r.event_id for r in rows}) == 2
    store.outbox_mark_sent([r.id for r in rows])
    assert store.outbox_unsent() == [] and store.outbox_lag() == 0
    with store.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one() == 2


def test_tokens_are_stored_hashed(store: SqlStore) -> None:
    token = store.create_user("carol", "vision", "admin")
    assert store.authenticate(token) == User("carol", "vision", "admin")
    assert store.authenticate(token + "x") is None
    with store.engine.connect() as c:
        stored = [r[0] for r in c.execute(sa.select(api_tokens.c.token_hash))]
    assert token not in stored and len(stored) == 1
    w, cred = store.register_worker(
        name="wx",
        hostname="h",
        pool="default",
        region=None,
        cpu=1,
        memory=1 << 30,
        gpu=0,
        gpu_type=None,
        labels={},
        version=None,
    )
    assert store.worker_by_token(cred) == w and store.authenticate(cred) is None


def test_undelivered_lease_is_requeued_as_infra(store: SqlStore) -> None:
    wid = worker(store)
    job = store.submit(ALICE, spec()).job
    attempt, token = lease_one(store, job.id, wid)
    assert not store.requeue_undelivered(job.id, attempt, "other-token")
    assert store.requeue_undelivered(job.id, attempt, token)
    assert not store.requeue_undelivered(job.id, attempt, token)  # once
    j = store.get_job(job.id)
    assert j is not None and j.status is JobStatus.PENDING
    assert j.attempts[0].outcome == "infra" and "never acknowledged" in (j.attempts[0].reason or "")
    # Once started, a lease is no longer "undelivered".
    attempt, token = lease_one(store, job.id, wid)
    store.report_started(job.id, attempt, token, wid)
    assert not store.requeue_undelivered(job.id, attempt, token)


def test_group_commit_isolates_a_failing_op(store: SqlStore) -> None:
    first = store.submit(ALICE, spec(), "dup").job

    def ok(conn: sa.Connection) -> str:
        return store.insert_job_in(conn, ALICE, spec(name="fine"), None).id

    def conflict(conn: sa.Connection) -> str:
        return store.insert_job_in(conn, ALICE, spec(), "dup").id

    def boom(conn: sa.Connection) -> str:
        raise KeyError("a bug in one op")

    results = store.apply_batch([ok, conflict, boom, ok])
    assert [r[0] for r in results] == [True, False, False, True]
    assert isinstance(results[1][1], sa.exc.IntegrityError) and isinstance(results[2][1], KeyError)
    jobs, _ = store.list_jobs(JobFilter())
    assert {j.id for j in jobs} == {first.id, results[0][1], results[3][1]}


def test_scheduler_state_is_published_and_replaced(store: SqlStore) -> None:
    assert store.get_scheduler_state("queue") is None
    store.put_scheduler_state("queue", {"positions": {"j1": 1}})
    store.put_scheduler_state("queue", {"positions": {"j2": 1}})
    got = store.get_scheduler_state("queue")
    assert got is not None and got[0] == {"positions": {"j2": 1}}


def test_cached_uris_are_kept_per_worker(store: SqlStore) -> None:
    wid = worker(store)
    assert store.get_worker(wid).cached_uris == ()  # type: ignore[union-attr]
    store.set_cached_uris(wid, ["s3://b/d2", "s3://b/d1", "s3://b/d1"])
    assert store.get_worker(wid).cached_uris == ("s3://b/d1", "s3://b/d2")  # type: ignore[union-attr]


def gang_lease(store: SqlStore, job_id: str, workers: list[str], ranks: int) -> list[Any]:
    attempt = store.get_job(job_id).attempt  # type: ignore[union-attr]
    return store.lease(
        Placement(job_id, workers[k % len(workers)], (), attempt, k, ranks) for k in range(ranks)
    )


def test_a_gang_is_leased_whole_or_not_at_all(store: SqlStore) -> None:
    w1, w2 = worker(store, "w1", hostname="host-1"), worker(store, "w2")
    job = store.submit(ALICE, spec(replicas=3)).job
    assert [r.rank for r in store.get_job(job.id).replicas] == [1, 2]  # type: ignore[union-attr]
    assert store.lease([Placement(job.id, w1, (), 0, 0, 3), Placement(job.id, w2, (), 0, 1, 3)]) == []
    leases = gang_lease(store, job.id, [w1, w2], 3)
    assert [(le.job_id, le.rank, le.world_size) for le in leases] == [
        (job.id, 0, 3),
        (f"{job.id}-1", 1, 3),
        (f"{job.id}-2", 2, 3),
    ]
    assert {le.master_addr for le in leases} == {"host-1"} and len({le.master_port for le in leases}) == 1
    # Listed once; not scheduled again while leased.
    listed, _ = store.list_jobs(JobFilter())
    assert [j.id for j in listed] == [job.id]
    assert store.pending_for_scheduling(time.time()) == []


def test_a_failed_rank_stops_rank_0_and_the_gang_retries_once_every_rank_is_idle(store: SqlStore) -> None:
    w1, w2 = worker(store, "w1"), worker(store, "w2")
    job = store.submit(ALICE, spec(replicas=2, retry={"max_attempts": 2, "on": ["failed"]})).job
    head, member = gang_lease(store, job.id, [w1, w2], 2)
    assert (
        store.report_finished(
            FinishReport(member.job_id, 1, member.lease_token, w2, AttemptOutcome.FAILED, 3, "boom")
        ).gang_id
        == job.id
    )
    stops = store.gang_stops(job.id)
    assert [(s.job_id, s.kind, s.worker_id) for s in stops] == [(job.id, "cancel", w1)]
    assert store.worker_commands(w1, [(job.id, 1, head.lease_token)])[0].kind == "cancel"
    # Rank 0, stopped, reports cancelled: the gang's attempt ends as rank 1's did, and is retried.
    assert finish(store, job.id, 1, head.lease_token, w1, AttemptOutcome.CANCELLED, -15) is JobStatus.PENDING
    j = store.get_job(job.id)
    assert j is not None and j.attempts[0].outcome == "failed" and "rank 1" in (j.attempts[0].reason or "")
    assert [p.id for p in store.pending_for_scheduling(time.time())] == [job.id]
    head, member = gang_lease(store, job.id, [w1, w2], 2)
    assert (head.attempt, member.attempt) == (2, 2)
    # Rank 0 succeeding ends the gang: rank 1 is told to stop and then ends as the gang did.
    assert finish(store, job.id, 2, head.lease_token, w1, AttemptOutcome.SUCCEEDED) is JobStatus.SUCCEEDED
    assert [s.job_id for s in store.gang_stops(job.id)] == [member.job_id]
    finish(store, member.job_id, 2, member.lease_token, w2, AttemptOutcome.CANCELLED, -15)
    j = store.get_job(job.id)
    assert j is not None and [r.status for r in j.replicas] == [JobStatus.SUCCEEDED]


def test_cancel_and_restart_take_the_whole_gang(store: SqlStore) -> None:
    w1 = worker(store, "w1")
    pending = store.submit(ALICE, spec(replicas=3)).job
    assert store.cancel(f"{pending.id}-2", "alice").status is JobStatus.CANCELLED  # a rank: its gang
    j = store.get_job(pending.id)
    assert j is not None and {r.status for r in j.replicas} == {JobStatus.CANCELLED}
    restarted = store.restart(pending.id, "alice")
    assert restarted.status is JobStatus.PENDING and {r.status for r in restarted.replicas} == {
        JobStatus.PENDING
    }
    running = store.submit(ALICE, spec(replicas=2)).job
    _head, member = gang_lease(store, running.id, [w1], 2)
    assert store.cancel(running.id, "alice").status is JobStatus.CANCELLING
    assert [s.job_id for s in store.gang_stops(running.id)] == [member.job_id]


def test_a_preempted_or_lost_gang_keeps_its_place_in_the_queue(store: SqlStore) -> None:
    now = [1000.0]
    store.clock = lambda: now[0]
    w1, w2 = worker(store, "w1"), worker(store, "w2")
    gang = store.submit(ALICE, spec(replicas=2)).job
    now[0] = 1010.0
    head, member = gang_lease(store, gang.id, [w1, w2], 2)
    now[0] = 1020.0
    later = store.submit(ALICE, spec(name="later")).job

    def queue() -> list[str]:
        return [p.id for p in store.pending_for_scheduling(now[0])]

    # Rank 1's worker dies: rank 0 is stopped and the gang's attempt ends LOST.
    now[0] = 1030.0
    assert store.mark_worker_dead(w2) == [member.job_id]
    assert finish(store, gang.id, 1, head.lease_token, w1, AttemptOutcome.PREEMPTED, 143) is JobStatus.PENDING
    j = store.get_job(gang.id)
    assert j is not None and j.attempts[0].outcome == "lost" and j.queued_at == 1000.0
    assert queue() == [gang.id, later.id]
    # Rank 0 is preempted: rank 1 is stopped, and the gang is requeued in its place again.
    w3 = worker(store, "w3")
    now[0] = 1040.0
    head, member = gang_lease(store, gang.id, [w1, w3], 2)
    now[0] = 1050.0
    assert finish(store, gang.id, 2, head.lease_token, w1, AttemptOutcome.PREEMPTED, 143) is JobStatus.PENDING
    finish(store, member.job_id, 2, member.lease_token, w3, AttemptOutcome.CANCELLED, -15)
    j = store.get_job(gang.id)
    assert j is not None and j.attempts[1].outcome == "preempted" and j.queued_at == 1000.0
    assert queue() == [gang.id, later.id]


def test_worker_pools_are_those_of_workers_not_dead(store: SqlStore) -> None:
    assert store.worker_pools() == frozenset()
    worker(store, "a1", pool="a")
    worker(store, "a2", pool="a")
    draining = worker(store, "b1", pool="b")
    dead = worker(store, "c1", pool="c")
    assert store.drain_worker(draining, None) is not None
    store.mark_worker_dead(dead)
    assert store.worker_pools() == {"a", "b"}
