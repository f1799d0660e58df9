"""Retention on every store (SQLite and PostgreSQL): finished jobs are archived to object storage and
read back the same, then deleted; a crash between the write and the delete is harmless; a dry run
changes nothing; what is live, or waited for, stays."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract.test_store import finish, lease_one, spec, worker
from trainyard.model.records import LogChunk, User
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.objects.base import ObjectStore
from trainyard.objects.factory import open_object_store
from trainyard.server.logtail import LogTails
from trainyard.server.services.files import FileService
from trainyard.server.services.logs import LogService
from trainyard.server.services.retention import RetentionService
from trainyard.server.views import event_json, job_json
from trainyard.store.schema import artifacts
from trainyard.store.sql import SqlStore

ALICE = User("alice", "vision", "user")


@pytest.fixture
def objects(tmp_path: Path) -> ObjectStore:
    return open_object_store(
        f"file://{tmp_path / 'objects'}", home=tmp_path, secret=b"s" * 32, public_url="http://127.0.0.1:1"
    )


@pytest.fixture
def retention(store: SqlStore, objects: ObjectStore) -> Iterator[RetentionService]:
    yield RetentionService(store, objects, retention_s=None, batch=2)


def finished_job(store: SqlStore, wid: str, outcome: AttemptOutcome = AttemptOutcome.SUCCEEDED) -> str:
    job = store.submit(ALICE, spec(name="train")).job
    attempt, token = lease_one(store, job.id, wid)
    assert store.report_started(job.id, attempt, token, wid)
    chunk = LogChunk(job.id, attempt, 0, 0, 6, f"logs/{job.id}/{attempt}/0", 6)
    assert store.add_log_chunk(chunk, token)
    finish(
        store, job.id, attempt, token, wid, outcome, exit_code=0 if outcome is AttemptOutcome.SUCCEEDED else 1
    )
    return job.id


def archive_keys(objects: ObjectStore) -> list[str]:
    """The archive objects written (a local store: files under its root; temporary files skipped)."""
    root = Path(objects.root)  # type: ignore[attr-defined]
    return sorted(
        str(p.relative_to(root))
        for p in (root / "archive").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )


def test_prune_archives_then_deletes_and_the_archive_reads_back_the_same(
    store: SqlStore, objects: ObjectStore, retention: RetentionService
) -> None:
    wid = worker(store)
    done = [finished_job(store, wid), finished_job(store, wid, AttemptOutcome.FAILED)]
    cancelled = store.cancel(store.submit(ALICE, spec()).job.id, "alice").id
    pending = store.submit(ALICE, spec()).job.id
    before = {i: store.get_job(i) for i in [*done, cancelled]}
    assert {c.job_id for c in store.pending_log_chunks(100)} >= set(done)
    events = {i: store.job_events(i) for i in before}

    report = retention.prune(time.time() + 1)

    assert (report.jobs, report.rows, report.skipped, report.more) == (3, 3, 0, False)
    assert report.attempts == 2 and report.log_chunks == 2 and report.events == sum(map(len, events.values()))
    assert sorted(report.objects) == archive_keys(objects) and len(report.objects) == 2  # batches of 2
    assert store.get_job(pending) is not None  # not finished: kept
    for job_id, job in before.items():
        assert store.get_job(job_id) is None and store.job_events(job_id) == []
        ref = retention.archived_ref(job_id)
        assert ref is not None and ref.team == "vision" and ref.object_key.startswith("archive/jobs/")
        back = retention.archived_job(ref)
        assert back is not None and back.archived
        assert job is not None
        assert {**job_json(back), "archived": False} == job_json(job)
        assert [event_json(e) for e in retention.archived_events(job_id)] == [
            event_json(e) for e in events[job_id]
        ]
        assert retention.archived_events(job_id, after_id=events[job_id][-1].id) == []
    assert [c.object_key for c in retention.archived_chunks(done[0], 1)] == [f"logs/{done[0]}/1/0"]
    # The log search index forgets them too (their chunks were queued for indexing).
    assert {c.job_id for c in store.pending_log_chunks(100)} & set(before) == set()
    # Nothing is left to prune, and a second run finds nothing.
    assert retention.prune(time.time() + 1).jobs == 0


def test_a_dry_run_counts_and_changes_nothing(
    store: SqlStore, objects: ObjectStore, retention: RetentionService
) -> None:
    wid = worker(store)
    ids = [finished_job(store, wid) for _ in range(3)]

    dry = retention.prune(time.time() + 1, dry_run=True)

    assert (dry.jobs, dry.rows, dry.attempts) == (3, 3, 3)
    assert archive_keys(objects) == []
    assert all(store.get_job(i) is not None and retention.archived_ref(i) is None for i in ids)
    real = retention.prune(time.time() + 1)
    assert (real.jobs, real.rows, real.attempts, real.events) == (
        dry.jobs,
        dry.rows,
        dry.attempts,
        dry.events,
    )


def test_only_jobs_finished_before_the_cutoff_go(store: SqlStore, retention: RetentionService) -> None:
    wid = worker(store)
    old = finished_job(store, wid)
    cutoff = time.time() + 0.001
    while time.time() <= cutoff:  # the next job finishes after the cutoff
        time.sleep(0.001)
    new = finished_job(store, wid)

    assert retention.prune(cutoff).jobs == 1
    assert store.get_job(old) is None and store.get_job(new) is not None


def test_a_crash_between_the_archive_write_and_the_delete_is_harmless(
    store: SqlStore, objects: ObjectStore, retention: RetentionService
) -> None:
    wid = worker(store)
    ids = [finished_job(store, wid) for _ in range(2)]

    def crash(key: str) -> None:
        raise RuntimeError(f"killed after writing {key}")

    retention.before_commit = crash
    with pytest.raises(RuntimeError, match="killed after writing"):
        retention.prune(time.time() + 1)
    written = archive_keys(objects)
    assert len(written) == 1  # the object is there, yet nothing was deleted or indexed
    assert all(store.get_job(i) is not None and retention.archived_ref(i) is None for i in ids)

    retention.before_commit = None
    assert retention.prune(time.time() + 1).jobs == 2
    # The same rows make the same object under the same key: written again, not twice.
    assert archive_keys(objects) == written
    refs = [retention.archived_ref(i) for i in ids]
    assert all(r is not None and r.object_key == written[0] for r in refs)


def test_a_job_that_changed_after_it_was_read_is_not_deleted(
    store: SqlStore, retention: RetentionService
) -> None:
    wid = worker(store)
    job_id = finished_job(store, wid)
    batch = store.archive.select_batch(time.time() + 1, 10)
    assert batch.units == [job_id]
    store.restart(job_id, "alice")  # between the archive's read and the delete

    assert store.archive.commit_batch(batch, "archive/jobs/x.jsonl.gz") == []
    job = store.get_job(job_id)
    assert job is not None and job.status is JobStatus.PENDING and retention.archived_ref(job_id) is None


def test_a_job_a_waiting_job_depends_on_stays(store: SqlStore, retention: RetentionService) -> None:
    wid = worker(store)
    upstream = finished_job(store, wid)
    waiting = store.submit(ALICE, spec(depends_on=[{"job": upstream, "condition": "succeeded"}])).job
    assert waiting.awaiting_dependencies  # the leader has not released it yet

    report = retention.prune(time.time() + 1)

    assert (report.jobs, report.skipped) == (0, 1)
    assert store.get_job(upstream) is not None


def test_an_array_goes_with_its_tasks_and_a_task_reads_back(
    store: SqlStore, retention: RetentionService
) -> None:
    array = store.submit(ALICE, spec(array={"indices": "0-2"})).job
    store.cancel(array.id, "alice")  # every task ends at once: none was leased

    report = retention.prune(time.time() + 1)

    assert (report.jobs, report.rows) == (1, 4)
    ref = retention.archived_ref(array.id)
    assert ref is not None
    back = retention.archived_job(ref)
    assert back is not None and back.array_tasks == 3 and back.array_counts == {"CANCELLED": 3}
    task_ref = retention.archived_ref(f"{array.id}-1")
    assert task_ref is not None
    task = retention.archived_job(task_ref)
    assert task is not None and task.array_id == array.id and task.array_index == 1
    assert store.get_job(f"{array.id}-1") is None


def test_a_gang_goes_with_its_ranks(store: SqlStore, retention: RetentionService) -> None:
    gang = store.submit(ALICE, spec(replicas=2)).job
    store.cancel(gang.id, "alice")

    report = retention.prune(time.time() + 1)

    assert (report.jobs, report.rows) == (1, 2)
    ref = retention.archived_ref(gang.id)
    assert ref is not None
    back = retention.archived_job(ref)
    assert back is not None and [r.rank for r in back.replicas] == [1]
    assert store.get_job(f"{gang.id}-1") is None


def test_an_archived_jobs_log_is_read_from_the_chunks_it_kept(
    store: SqlStore, objects: ObjectStore, retention: RetentionService
) -> None:
    wid = worker(store)
    job_id = finished_job(store, wid)
    objects.put(f"logs/{job_id}/1/0", gzip.compress(b"hello\n"))  # the chunk the job sealed
    logs = LogService(store, objects, LogTails())
    logs.archived_chunks = retention.archived_chunks
    assert retention.prune(time.time() + 1).jobs == 1
    ref = retention.archived_ref(job_id)
    assert ref is not None
    job = retention.archived_job(ref)
    assert job is not None

    got = asyncio.run(logs.read_log(job, None, 0))

    assert (got.attempt, got.offset, got.data, got.next_offset) == (1, 0, b"hello\n", 6)
    assert asyncio.run(logs.log_end(job, None)) == 6


def test_an_archived_jobs_artifacts_are_listed_from_the_archive(
    store: SqlStore, objects: ObjectStore, retention: RetentionService
) -> None:
    wid = worker(store)
    job_id = finished_job(store, wid)
    with store.transaction() as conn:  # as the attempt's final report records it
        conn.execute(
            artifacts.insert().values(
                job_id=job_id,
                attempt=1,
                path="model.npz",
                size=3,
                sha256="a" * 64,
                object_key=f"artifacts/{job_id}/1/model.npz",
                created_at=time.time(),
            )
        )
    files = FileService(store, objects, url_ttl=60, unpacked_limit=1 << 20, file_limit=10)
    files.archived_artifacts = retention.archived_artifacts
    before = asyncio.run(files.artifacts(job_id, None))
    assert [a.path for a in before] == ["model.npz"]

    assert retention.prune(time.time() + 1).artifacts == 1

    assert asyncio.run(files.artifacts(job_id, None)) == before
    assert asyncio.run(files.artifact(job_id, "model.npz", None)) == before[0]


def test_outbox_rows_the_bus_had_before_the_cutoff_go_and_unsent_ones_stay(
    store: SqlStore, retention: RetentionService
) -> None:
    wid = worker(store)
    finished_job(store, wid)
    old = [r.id for r in store.outbox_unsent(10_000)]
    store.outbox_mark_sent(old[: len(old) - 1])  # the newest stays unsent, however old
    cutoff = time.time() + 1
    unsent = old[-1]

    dry = retention.prune(cutoff, dry_run=True)
    assert dry.outbox == len(old) - 1
    assert [r.id for r in store.outbox_unsent(10_000)] == [unsent]

    report = retention.prune(cutoff)
    assert report.outbox == len(old) - 1 and report.as_json(lambda t: None)["outbox"] == report.outbox
    assert [r.id for r in store.outbox_unsent(10_000)] == [unsent]
    assert retention.prune(cutoff).outbox == 0
    # Rows sent after the cutoff are kept for the replay check.
    store.submit(ALICE, spec())
    fresh = [r.id for r in store.outbox_unsent(10_000) if r.id != unsent]
    store.outbox_mark_sent(fresh)
    assert retention.prune(cutoff - 3600).outbox == 0
