"""The status-cache reads of one loop tick go to the cache together (``StatusReads``), and
``get_statuses`` answers as ``get_status`` would for each id, on memory, Redis, and Redis behind
``ResilientCache`` while it is down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import sqlite_store
from tests.redis_server import RedisServer, key_prefix, running_redis
from trainyard.cache.base import NO_FILL, Cache, StatusTicket
from trainyard.cache.memory import MemoryCache
from trainyard.cache.redis import RedisCache, RedisConfig
from trainyard.cache.resilient import ResilientCache
from trainyard.cache.sql import SqlCache
from trainyard.server.services.jobs import StatusReads

Read = tuple[dict[str, Any] | None, StatusTicket]


class Recording(MemoryCache):
    """A memory cache that records each ``get_statuses`` call, and can fail them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        self.fail: Exception | None = None

    def get_statuses(self, job_ids: Sequence[str]) -> list[Read]:
        self.calls.append(list(job_ids))
        if self.fail is not None:
            raise self.fail
        return super().get_statuses(job_ids)


def _fill(cache: Cache, job_id: str) -> None:
    assert cache.fill_status(job_id, {"id": job_id}, cache.get_status(job_id)[1], 60.0)


@pytest.mark.anyio
async def test_reads_begun_in_one_tick_are_one_call_each_answered_its_own() -> None:
    cache = Recording()
    for j in ("a", "b"):
        _fill(cache, j)
    reads = StatusReads(cache)
    got = await asyncio.gather(reads.get("a"), reads.get("zz"), reads.get("b"), reads.get("a"))
    assert cache.calls == [["a", "zz", "b", "a"]]
    assert [view for view, _ in got] == [{"id": "a"}, None, {"id": "b"}, {"id": "a"}]
    assert got == [cache.get_status(j) for j in ("a", "zz", "b", "a")]
    assert await reads.get("b") == cache.get_status("b")  # a lone read, in a call of its own
    assert cache.calls[1:] == [["b"]]


@pytest.mark.anyio
async def test_a_failed_read_fails_every_reader_of_its_tick_and_not_the_next() -> None:
    cache = Recording()
    reads = StatusReads(cache)
    cache.fail = RuntimeError("down")
    got = await asyncio.gather(reads.get("a"), reads.get("b"), return_exceptions=True)
    assert all(isinstance(e, RuntimeError) for e in got)
    cache.fail = None
    assert (await reads.get("a"))[0] is None


@pytest.mark.anyio
async def test_a_cancelled_reader_leaves_the_others_answered() -> None:
    cache = Recording()
    _fill(cache, "b")
    reads = StatusReads(cache)
    first = asyncio.ensure_future(reads.get("a"))
    second = asyncio.ensure_future(reads.get("b"))
    await asyncio.sleep(0)  # both wait on the tick's read
    first.cancel()
    assert (await second)[0] == {"id": "b"}
    assert first.cancelled()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    if request.param == "memory":
        yield MemoryCache()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    c = RedisCache(RedisConfig(server.url, prefix=key_prefix()))
    yield c
    c.close()


def test_get_statuses_is_get_status_of_each_id(cache: Cache) -> None:
    _fill(cache, "a")
    _fill(cache, "c")
    cache.invalidate_status(["c"])
    ids = ["a", "b", "c", "a"]
    assert cache.get_statuses(ids) == [cache.get_status(j) for j in ids]
    assert cache.get_statuses([]) == []


def test_a_ticket_from_get_statuses_fills_until_an_invalidation(cache: Cache) -> None:
    (_, t1), (_, t2) = cache.get_statuses(["a", "b"])
    cache.invalidate_status(["b"])
    assert cache.fill_status("a", {"id": "a"}, t1, 60.0)
    assert not cache.fill_status("b", {"id": "b"}, t2, 60.0)
    (_, t2_fresh), (_, t1_after_flush) = cache.get_statuses(["b", "a"])
    cache.flush_statuses()
    assert not cache.fill_status("b", {"id": "b"}, t2_fresh, 60.0)
    assert cache.get_statuses(["a"]) == [(None, cache.get_status("a")[1])]
    assert t1_after_flush != cache.get_status("a")[1]


def test_redis_down_reads_miss_with_no_fill(tmp_path: Path) -> None:
    server = RedisServer()
    server.start()
    store = sqlite_store(tmp_path / "state.db")
    primary = RedisCache(RedisConfig(server.url, prefix=key_prefix()))
    cache = ResilientCache(primary, SqlCache(store, heartbeat_ttl_s=1.0), heartbeat_ttl_s=1.0)
    try:
        _fill(cache, "a")
        assert cache.get_statuses(["a", "b"])[0][0] == {"id": "a"}
        server.stop()
        assert cache.get_statuses(["a", "b"]) == [(None, NO_FILL), (None, NO_FILL)]
    finally:
        primary.close()
        store.close()
        server.stop()
