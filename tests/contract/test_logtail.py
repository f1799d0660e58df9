"""The live log tail contract: the same behaviour in memory and on Redis; then ResilientLogTails
across a Redis that stops and comes back."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from tests.redis_server import RedisServer, key_prefix, running_redis
from trainyard.cache.base import LogTailStore
from trainyard.cache.redis import RedisConfig
from trainyard.cache.redis_tail import RedisLogTails
from trainyard.cache.resilient import ResilientLogTails
from trainyard.server.logtail import LogTails

T = TypeVar("T")
CAP = 1000


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def tails(request: pytest.FixtureRequest) -> Iterator[LogTailStore]:
    if request.param == "memory":
        yield LogTails(cap=CAP)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    t = RedisLogTails(RedisConfig(server.url, prefix=key_prefix()), cap=CAP)
    yield t
    t.close()


def run(tails: LogTailStore, body: Callable[[], Awaitable[T]]) -> T:
    """Run an async test body in a loop of its own, closing the loop-bound Redis client in it."""

    async def main() -> T:
        try:
            return await body()
        finally:
            if isinstance(tails, RedisLogTails):
                await tails.aclose()

    return asyncio.run(main())


def test_append_and_read(tails: LogTailStore) -> None:
    assert tails.end("j", 1) is None
    assert tails.read("j", 1, 5) == (5, b"")
    assert tails.append("j", 1, 0, b"hello ") == 6
    assert tails.append("j", 1, 6, b"world") == 11
    assert tails.read("j", 1, 0) == (0, b"hello world")
    assert tails.read("j", 1, 3) == (3, b"lo world")  # from inside a push
    assert tails.read("j", 1, 6) == (6, b"world")
    assert tails.read("j", 1, 11) == (11, b"")
    assert tails.read("j", 1, 50) == (50, b"")
    assert tails.end("j", 1) == 11


def test_overlap_with_what_is_held_is_ignored(tails: LogTailStore) -> None:
    tails.append("j", 1, 0, b"hello")
    assert tails.append("j", 1, 3, b"lo, world") == 12  # a resend after a lost ack
    assert tails.append("j", 1, 0, b"he") == 12  # all of it held already
    assert tails.read("j", 1, 0) == (0, b"hello, world")


def test_a_gap_restarts_the_tail_at_the_new_offset(tails: LogTailStore) -> None:
    tails.append("j", 1, 0, b"abc")
    assert tails.append("j", 1, 10, b"xyz") == 13
    assert tails.read("j", 1, 0) == (10, b"xyz")
    assert tails.read("j", 1, 5) == (10, b"xyz")
    assert tails.read("j", 1, 11) == (11, b"yz")


def test_the_first_push_may_start_anywhere(tails: LogTailStore) -> None:
    # A control plane that restarted (or a Redis that did) picks up where the worker is.
    assert tails.append("j", 1, 100, b"abc") == 103
    assert tails.read("j", 1, 0) == (100, b"abc")
    assert tails.end("j", 1) == 103


def test_attempts_are_separate(tails: LogTailStore) -> None:
    tails.append("j", 1, 0, b"first")
    tails.append("j", 2, 0, b"second")
    assert tails.read("j", 1, 0) == (0, b"first")
    assert tails.read("j", 2, 0) == (0, b"second")
    assert tails.end("k", 1) is None


@dataclass
class Follower:
    pos: int = 0
    got: bytearray = field(default_factory=bytearray)

    def catch_up(self, tails: LogTailStore, source: bytes) -> None:
        offset, data = tails.read("j", 1, self.pos)
        assert offset == self.pos, "a follower within the cap of the end never sees a gap"
        self.got += data
        self.pos += len(data)
        assert bytes(self.got) == source[: self.pos], "no byte twice, none missing"


def test_followers_resume_without_gaps_or_duplicates(tails: LogTailStore) -> None:
    rnd = random.Random(7)
    source = bytes(rnd.getrandbits(8) for _ in range(CAP // 2 * 3))
    fast, slow = Follower(), Follower()  # two readers, each at its own pace
    sent = 0
    while sent < len(source):
        start = max(0, sent - rnd.randrange(0, 20))  # sometimes a resend overlapping the last push
        end = min(len(source), sent + rnd.randrange(1, 60))
        assert tails.append("j", 1, start, source[start:end]) == end
        sent = end
        for follower, chance in ((fast, 0.7), (slow, 0.2)):
            if rnd.random() < chance:
                follower.catch_up(tails, source)
    for follower in (fast, slow):
        follower.catch_up(tails, source)
        assert follower.pos == len(source)
    # One that comes after more than the cap was pushed resumes at the oldest byte held.
    assert tails.read("j", 1, 0) == (len(source) - CAP, source[-CAP:])


def test_the_tail_keeps_the_newest_cap_bytes(tails: LogTailStore) -> None:
    source = bytes(range(256)) * 20
    for i in range(0, 5000, 100):
        tails.append("j", 1, i, source[i : i + 100])
    assert tails.read("j", 1, 0) == (5000 - CAP, source[5000 - CAP : 5000])
    assert tails.end("j", 1) == 5000
    tails.append("j", 2, 0, source[:2500])  # one push larger than the cap
    assert tails.read("j", 2, 0) == (2500 - CAP, source[2500 - CAP : 2500])


def test_mark_ended(tails: LogTailStore) -> None:
    tails.mark_ended("j", 1)
    assert tails.end("j", 1) == 0
    tails.append("j", 2, 0, b"abc")
    tails.mark_ended("j", 2)
    tails.mark_ended("j", 2)
    assert tails.end("j", 2) == 3
    assert tails.append("j", 2, 3, b"def") == 6  # late bytes after the end are still served
    assert tails.append("j", 2, 0, b"abcdef") == 6  # and a resend of them is ignored
    assert tails.read("j", 2, 0) == (0, b"abcdef")
    assert tails.append("j", 2, 10, b"xyz") == 13  # a gap after the end restarts the tail
    assert tails.read("j", 2, 0) == (10, b"xyz")

    async def body() -> None:
        t0 = time.monotonic()
        await tails.wait("j", 2, 5.0, since=13)  # still ended: nothing to wait for
        assert time.monotonic() - t0 < 0.5

    run(tails, body)


def test_wait_wakes_on_append(tails: LogTailStore) -> None:
    tails.append("j", 1, 0, b"abc")

    async def body() -> None:
        for since in (3, None):
            waiter = asyncio.create_task(tails.wait("j", 1, 5.0, since))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            t0 = time.monotonic()
            end = tails.end("j", 1) or 0
            tails.append("j", 1, end, b"more")
            await asyncio.wait_for(waiter, 2.0)
            assert time.monotonic() - t0 < 1.0

    run(tails, body)


def test_wait_for_an_attempt_not_seen_yet(tails: LogTailStore) -> None:
    async def body() -> None:
        waiter = asyncio.create_task(tails.wait("j", 1, 5.0, 0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        tails.append("j", 1, 0, b"first")
        await asyncio.wait_for(waiter, 2.0)

    run(tails, body)


def test_wait_returns_at_once_when_bytes_are_past_since(tails: LogTailStore) -> None:
    tails.append("j", 1, 0, b"0123456789")

    async def body() -> None:
        t0 = time.monotonic()
        await tails.wait("j", 1, 5.0, since=4)
        assert time.monotonic() - t0 < 0.5

    run(tails, body)


def test_wait_times_out(tails: LogTailStore) -> None:
    tails.append("j", 1, 0, b"abc")

    async def body() -> None:
        t0 = time.monotonic()
        await tails.wait("j", 1, 0.2, since=3)
        assert 0.15 < time.monotonic() - t0 < 1.0

    run(tails, body)


def test_wait_wakes_when_the_attempt_ends(tails: LogTailStore) -> None:
    tails.append("j", 1, 0, b"abc")

    async def body() -> None:
        waiter = asyncio.create_task(tails.wait("j", 1, 5.0, since=3))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        tails.mark_ended("j", 1)
        await asyncio.wait_for(waiter, 2.0)
        t0 = time.monotonic()
        await tails.wait("j", 1, 5.0, since=3)  # ended already: nothing to wait for
        assert time.monotonic() - t0 < 0.5

    run(tails, body)


# ---- Redis specifics -----------------------------------------------------------------------------
def test_redis_stream_layout(redis_server: RedisServer) -> None:
    prefix = key_prefix()
    t = RedisLogTails(RedisConfig(redis_server.url, prefix=prefix), cap=CAP)
    raw = redis_server.client()
    try:
        t.append("j", 1, 0, b"hello ")
        t.append("j", 1, 6, b"world")
        key = f"{prefix}log:j:1"
        ids = [entry_id for entry_id, _ in raw.xrange(key)]
        assert ids == [b"6-0", b"11-0"]  # IDs are end offsets
        assert raw.xrange(key, min="(6-0") == [(b"11-0", {b"o": b"6", b"d": b"world"})]
        assert raw.ttl(key) > 23 * 3600
        t.mark_ended("j", 1)
        assert [entry_id for entry_id, _ in raw.xrange(key)][-1] == b"11-1"
        assert raw.ttl(key) <= 3600
    finally:
        raw.close()
        t.close()


# ---- ResilientLogTails: Redis stops and comes back -----------------------------------------------
def test_outage_is_served_from_memory_then_redis_again() -> None:
    server = RedisServer()
    server.start()
    prefix = key_prefix()
    primary = RedisLogTails(RedisConfig(server.url, prefix=prefix), cap=CAP)
    tails = ResilientLogTails(primary, LogTails(cap=CAP), probe_interval_s=0.2)
    raw = server.client()
    try:

        async def body() -> None:
            assert tails.append("j", 1, 0, b"a" * 10) == 10
            assert raw.exists(f"{prefix}log:j:1")

            server.stop()
            t0 = time.monotonic()
            assert tails.append("j", 1, 10, b"b" * 10) == 20  # into memory, from where the worker is
            assert not tails.primary_up
            assert tails.read("j", 1, 10) == (10, b"b" * 10)
            assert tails.end("j", 1) == 20
            await tails.wait("j", 1, 0.1, since=20)
            waiter = asyncio.create_task(tails.wait("j", 1, 5.0, since=20))
            await asyncio.sleep(0.05)
            tails.append("j", 1, 20, b"c" * 10)
            await asyncio.wait_for(waiter, 2.0)
            assert time.monotonic() - t0 < 2.0, "calls during the outage must not wait for Redis"

            server.start()
            deadline = time.monotonic() + 5
            while not tails.primary_up:
                assert time.monotonic() < deadline, "Redis was not used again after it came back"
                tails.end("j", 1)
                await asyncio.sleep(0.02)
            # Redis came back empty: the next push starts a new run there, where the worker is.
            assert tails.append("j", 1, 30, b"d" * 10) == 40
            assert tails.read("j", 1, 0) == (30, b"d" * 10)
            assert raw.exists(f"{prefix}log:j:1")
            waiter = asyncio.create_task(tails.wait("j", 1, 5.0, since=40))
            await asyncio.sleep(0.05)
            tails.append("j", 1, 40, b"e")
            await asyncio.wait_for(waiter, 2.0)

        run(primary, body)
    finally:
        raw.close()
        primary.close()
        server.stop()


def test_a_wait_that_finds_redis_gone_falls_back() -> None:
    server = RedisServer()
    server.start()
    primary = RedisLogTails(RedisConfig(server.url, prefix=key_prefix()), cap=CAP)
    tails = ResilientLogTails(primary, LogTails(cap=CAP), probe_interval_s=0.2)
    try:
        server.stop()

        async def body() -> None:
            t0 = time.monotonic()
            await tails.wait("j", 1, 0.3, since=0)
            assert 0.2 < time.monotonic() - t0 < 1.5
            assert not tails.primary_up

        run(primary, body)
    finally:
        primary.close()
        server.stop()
