"""Heartbeats on a shared cache are noted on the event loop and written together from a thread;
the liveness sweep writes what is due before it reads, and a failed write keeps the beats due."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from trainyard.cache.memory import MemoryCache
from trainyard.server.beats import BeatBuffer

pytestmark = pytest.mark.timeout(30)


class _Recording(MemoryCache):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[str], float, str]] = []
        self.fail = False

    def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        raise AssertionError("beats must go in batches")

    def heartbeats(self, worker_ids: Sequence[str], ttl_s: float) -> None:
        if self.fail:
            raise ConnectionError("cache down")
        self.calls.append((list(worker_ids), ttl_s, threading.current_thread().name))
        super().heartbeats(worker_ids, ttl_s)


def test_beats_that_arrive_together_are_written_in_one_call_off_the_loop() -> None:
    cache = _Recording()
    buf = BeatBuffer(cache, 30.0, delay_s=0.05)

    async def main() -> None:
        for i in range(50):
            buf.note(f"w{i % 40}")  # ten workers beat twice: each is written once
        assert cache.calls == []  # nothing on the loop itself
        await asyncio.sleep(0.3)

    asyncio.run(main())
    assert len(cache.calls) == 1
    ids, ttl, thread = cache.calls[0]
    assert ids == [f"w{i}" for i in range(40)] and ttl == 30.0
    assert thread != threading.main_thread().name
    assert set(cache.last_heartbeats([f"w{i}" for i in range(41)])) == {f"w{i}" for i in range(40)}
    assert buf.pending == 0


def test_beats_keep_coming_and_keep_being_written() -> None:
    cache = _Recording()
    buf = BeatBuffer(cache, 30.0, delay_s=0.02)

    async def main() -> None:
        for i in range(10):
            buf.note(f"w{i}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)

    asyncio.run(main())
    written = [w for ids, _, _ in cache.calls for w in ids]
    assert written == [f"w{i}" for i in range(10)]


def test_a_sweep_flushes_what_is_due_before_it_reads() -> None:
    cache = _Recording()
    buf = BeatBuffer(cache, 30.0, delay_s=60.0)

    async def main() -> None:
        buf.note("a")
        buf.note("b")
        assert cache.last_heartbeats(["a", "b"]) == {}  # still due
        assert await asyncio.to_thread(buf.flush) == 2
        assert set(cache.last_heartbeats(["a", "b"])) == {"a", "b"}

    asyncio.run(main())


def test_a_failed_write_keeps_the_beats_due() -> None:
    cache = _Recording()
    buf = BeatBuffer(cache, 30.0, delay_s=0.01)
    cache.fail = True

    async def main() -> None:
        buf.note("a")
        await asyncio.sleep(0.1)  # the write failed (logged); "a" stays due
        assert buf.pending == 1
        cache.fail = False
        buf.note("b")
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert cache.calls and cache.calls[-1][0] == ["a", "b"]
    assert buf.pending == 0


def test_a_beat_noted_during_a_write_is_written_without_another_beat() -> None:
    cache = _Recording()
    buf = BeatBuffer(cache, 30.0, delay_s=0.01)
    writing, release = threading.Event(), threading.Event()
    heartbeats = cache.heartbeats

    def slow(worker_ids: Sequence[str], ttl_s: float) -> None:
        writing.set()
        assert release.wait(5)
        heartbeats(worker_ids, ttl_s)

    cache.heartbeats = slow  # type: ignore[method-assign]

    async def main() -> None:
        buf.note("a")
        assert await asyncio.to_thread(writing.wait, 5)
        buf.note("b")  # while "a" is being written: no new task starts here
        release.set()
        await asyncio.sleep(0.2)

    asyncio.run(main())
    assert [ids for ids, _, _ in cache.calls] == [["a"], ["b"]]
    assert buf.pending == 0
