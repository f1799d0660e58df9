"""Log search on the control plane's services: a sealed chunk is only queued; the indexer, apart
from the seal, makes it searchable; a restarted control plane resumes the queue; each caller sees
only their team's lines."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.server.plane import ALICE, BOB, Plane
from trainyard.model.records import LogChunk, User
from trainyard.objects.factory import open_object_store
from trainyard.server.metrics import Metrics
from trainyard.server.services.logsearch import BadSearch, LogIndexer, LogSearch
from trainyard.store.sql import Lease, SqlStore

pytestmark = pytest.mark.anyio
ADMIN = User("root", "default", "admin")
OOM = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


def objects_of(tmp_path: Path):  # type: ignore[no-untyped-def]
    # The same local object store the plane writes (it lives under the plane's home).
    return open_object_store(None, home=tmp_path, secret=b"s" * 32, public_url="http://127.0.0.1:1")


async def running_job(plane: Plane, user: User = ALICE) -> Lease:
    await plane.worker()
    job = await plane.submit(user)
    lease = next(le for le in plane.schedule() if le.job_id == job.id)
    await plane.start(lease)
    return lease


async def seal(plane: Plane, tmp_path: Path, lease: Lease, seq: int, start: int, data: bytes) -> None:
    key = f"jobs/{lease.job_id}/{lease.attempt}/logs/{seq:08d}.log.gz"
    packed = gzip.compress(data)
    objects_of(tmp_path).put(key, packed)
    chunk = LogChunk(lease.job_id, lease.attempt, seq, start, start + len(data), key, len(packed))
    assert await plane.attempts.seal_log_chunk(chunk, lease.lease_token)


async def lines(search: LogSearch, user: User, q: str, **kw: object) -> list[str]:
    hits, _ = await search.search(user, q, **kw)  # type: ignore[arg-type]
    return [h["line"] for h in hits]


@contextlib.asynccontextmanager
async def indexer_running(indexer: LogIndexer) -> AsyncIterator[None]:
    """The indexer as the leader runs it: a loop of its own, beside the request path."""
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await asyncio.to_thread(indexer.index_once)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        await task


async def wait_until(pred, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_sealed_chunk_becomes_searchable_apart_from_the_seal(plane: Plane, tmp_path: Path) -> None:
    lease = await running_job(plane)
    search = LogSearch(plane.store)
    log = f"epoch 1\n{OOM}\nbye\n".encode()
    cut = log.index(b"of memory")  # the chunks split the line
    await seal(plane, tmp_path, lease, 0, 0, log[:cut])
    await seal(plane, tmp_path, lease, 1, cut, log[cut:])
    # Sealing only queued the chunks: nothing is searchable until the indexer has run.
    assert plane.store.log_index_queue_length() == 2
    assert await lines(search, ALICE, "CUDA out of memory") == []
    async with indexer_running(LogIndexer(plane.store, objects_of(tmp_path))):

        async def found() -> bool:
            return await lines(search, ALICE, "CUDA out of memory") == [OOM]

        await wait_until(found)
    hits, more = await search.search(ALICE, "cuda out of memory")
    assert more is None
    assert hits[0]["job_id"] == lease.job_id and hits[0]["attempt"] == 1 and hits[0]["team"] == "vision"
    assert hits[0]["offset"] == log.index(b"RuntimeError") and hits[0]["time"].endswith("Z")
    # Another team sees none of it, not even by asking for the team or the job; an admin does.
    assert await lines(search, BOB, "CUDA out of memory") == []
    assert await lines(search, BOB, "CUDA out of memory", team="vision") == []
    assert await lines(search, BOB, "CUDA out of memory", job_id=lease.job_id) == []
    assert await lines(search, ADMIN, "CUDA out of memory", team="vision") == [OOM]
    assert plane.store.log_index_queue_length() == 0


async def test_a_restarted_control_plane_indexes_what_was_left(plane: Plane, tmp_path: Path) -> None:
    lease = await running_job(plane)
    await seal(plane, tmp_path, lease, 0, 0, b"left in the queue when the leader died\n")
    # No indexer ran; a new store on the same database (the restarted control plane) takes over.
    store = SqlStore(plane.store.url)
    try:
        assert LogIndexer(store, objects_of(tmp_path)).index_once() == 1
        assert await lines(LogSearch(store), ALICE, "leader died") == [
            "left in the queue when the leader died"
        ]
    finally:
        store.close()


async def test_unreadable_chunks_leave_the_queue_unindexed(plane: Plane, tmp_path: Path) -> None:
    lease = await running_job(plane)
    await seal(plane, tmp_path, lease, 0, 0, b"fine line\n")
    key = f"jobs/{lease.job_id}/1/logs/00000001.log.gz"
    objects_of(tmp_path).put(key, b"not gzip at all")
    chunk = LogChunk(lease.job_id, 1, 1, 10, 30, key, 15)
    assert await plane.attempts.seal_log_chunk(chunk, lease.lease_token)
    gone = LogChunk(lease.job_id, 1, 2, 30, 40, f"jobs/{lease.job_id}/1/logs/missing.log.gz", 9)
    assert await plane.attempts.seal_log_chunk(gone, lease.lease_token)
    assert LogIndexer(plane.store, objects_of(tmp_path)).index_once() == 3
    assert plane.store.log_index_queue_length() == 0
    assert await lines(LogSearch(plane.store), ALICE, "fine line") == ["fine line"]


async def test_pages_follow_the_cursor(plane: Plane, tmp_path: Path) -> None:
    lease = await running_job(plane)
    log = b"".join(f"step {i} loss nan\n".encode() for i in range(25))
    await seal(plane, tmp_path, lease, 0, 0, log)
    LogIndexer(plane.store, objects_of(tmp_path)).index_once()
    search = LogSearch(plane.store)
    seen: list[str] = []
    cursor = None
    while True:
        hits, cursor = await search.search(ALICE, "loss nan", limit=10, cursor=cursor)
        seen += [h["line"] for h in hits]
        if cursor is None:
            break
    assert len(seen) == 25 and len(set(seen)) == 25


@pytest.mark.parametrize(
    ("q", "kw", "field"),
    [
        ('"', {}, "q"),
        ("  ", {}, "q"),
        ("ok", {"cursor": "l0"}, "cursor"),
        ("ok", {"cursor": "'; drop table log_lines; --"}, "cursor"),
        ("ok", {"limit": 0}, "limit"),
        ("ok", {"limit": 10**9}, "limit"),
    ],
)
async def test_bad_searches_are_refused(plane: Plane, q: str, kw: dict[str, object], field: str) -> None:
    with pytest.raises(BadSearch) as e:
        await LogSearch(plane.store).search(ALICE, q, **kw)  # type: ignore[arg-type]
    assert e.value.field == field


async def test_the_indexer_reports_lines_and_backlog(plane: Plane, tmp_path: Path) -> None:
    lease = await running_job(plane)
    await seal(plane, tmp_path, lease, 0, 0, b"one\ntwo\n\nthree\n")
    await seal(plane, tmp_path, lease, 1, 16, b"four\n")
    metrics = Metrics()
    indexer = LogIndexer(plane.store, objects_of(tmp_path), metrics)
    assert indexer.index_once(limit=1) == 1
    assert metrics.registry.get_sample_value("trainyard_log_lines_indexed_total") == 3
    assert metrics.registry.get_sample_value("trainyard_log_index_backlog") == 1
    assert indexer.index_once() == 1
    assert metrics.registry.get_sample_value("trainyard_log_lines_indexed_total") == 4
    assert metrics.registry.get_sample_value("trainyard_log_index_backlog") == 0
