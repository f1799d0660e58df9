"""Who follows an attempt's log: the same behaviour in memory and on Redis (shared by replicas).

``follow`` says when the agent must be asked to push (once per resend interval between all
followers); ``unfollow`` says when the last follower left; followers that vanish expire."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer, key_prefix, running_redis
from trainyard.cache.base import LogTailStore
from trainyard.cache.redis import RedisConfig
from trainyard.cache.redis_tail import RedisLogTails
from trainyard.server.logtail import LogTails


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def tails(request: pytest.FixtureRequest) -> Iterator[LogTailStore]:
    if request.param == "memory":
        yield LogTails()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    t = RedisLogTails(RedisConfig(server.url, prefix=key_prefix()))
    yield t
    t.close()


def test_the_first_follower_asks_and_the_others_do_not(tails: LogTailStore) -> None:
    assert tails.follow("j", 1, "a", 30.0, 30.0)
    assert not tails.follow("j", 1, "b", 30.0, 30.0)
    assert not tails.follow("j", 1, "a", 30.0, 30.0)  # a refresh within the resend interval
    assert tails.follow("j", 2, "a", 30.0, 30.0), "another attempt is followed on its own"
    assert tails.follow("k", 1, "a", 30.0, 30.0)


def test_the_ask_is_repeated_after_the_resend_interval(tails: LogTailStore) -> None:
    assert tails.follow("j", 1, "a", 30.0, 0.2)
    deadline = time.monotonic() + 10.0
    while not tails.follow("j", 1, "b", 30.0, 0.2):
        assert time.monotonic() < deadline, "the ask was never due again"
        time.sleep(0.05)


def test_the_last_follower_to_leave_stops_it(tails: LogTailStore) -> None:
    tails.follow("j", 1, "a", 30.0, 30.0)
    tails.follow("j", 1, "b", 30.0, 30.0)
    assert not tails.unfollow("j", 1, "a")
    assert tails.unfollow("j", 1, "b")
    # Followed anew: the agent is asked again at once.
    assert tails.follow("j", 1, "c", 30.0, 30.0)


def test_a_vanished_follower_expires(tails: LogTailStore) -> None:
    tails.follow("j", 1, "gone", 0.2, 30.0)  # a replica that crashed never unfollows
    tails.follow("j", 1, "here", 30.0, 30.0)
    deadline = time.monotonic() + 10.0
    while True:
        time.sleep(0.3)
        # "here" leaves; "gone" lapsed with its ttl, so nobody is left.
        if tails.unfollow("j", 1, "here"):
            break
        tails.follow("j", 1, "here", 30.0, 30.0)
        assert time.monotonic() < deadline, "the vanished follower never expired"


def test_unfollowing_an_unknown_attempt_says_nobody_follows(tails: LogTailStore) -> None:
    assert tails.unfollow("nobody", 1, "x")
