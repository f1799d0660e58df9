"""The event-bus contract: the same behaviour from the in-process bus and from Kafka (tansu)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kafka_broker import KafkaBroker, free_port
from trainyard.bus.base import (
    JOB_TOPICS,
    TOPIC_EVENTS,
    TOPIC_SUBMITTED,
    BusUnavailable,
    EventBus,
    Subscription,
)
from trainyard.bus.kafka import KafkaBus, KafkaBusConfig
from trainyard.bus.memory import MemoryBus
from trainyard.store import sql

BOTH = frozenset(JOB_TOPICS)
MakeBus = Callable[..., EventBus]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as b:
        yield b


@pytest.fixture(params=["memory", "kafka"])
def make_bus(request: pytest.FixtureRequest) -> Iterator[MakeBus]:
    made: list[EventBus] = []

    def make(queue: int = 10_000) -> EventBus:
        bus: EventBus
        if request.param == "memory":
            bus = MemoryBus(maxsize=queue)
        else:
            broker: KafkaBroker = request.getfixturevalue("broker")
            bus = KafkaBus(
                KafkaBusConfig(
                    broker.bootstrap,
                    topic_prefix=f"c{uuid.uuid4().hex[:8]}.",  # a fresh log per test on a shared broker
                    partitions=3,
                    subscriber_queue=queue,
                )
            )
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def event(job: str, n: int, event_id: str | None = None) -> dict[str, Any]:
    return {
        "schema": 1,
        "event_id": event_id or str(uuid.uuid4()),
        "job_id": job,
        "team": "vision",
        "type": "t",
        "from_status": None,
        "to_status": "PENDING",
        "attempt": 0,
        "at": time.time(),
        "data": {"n": n},
    }


async def take(sub: Subscription, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def read() -> None:
        async for payload in sub:
            got.append(payload)
            if len(got) == n:
                return

    await asyncio.wait_for(read(), timeout)
    return got


async def nothing_more(sub: Subscription, wait: float = 0.5) -> bool:
    try:
        await asyncio.wait_for(sub.__aiter__().__anext__(), wait)
    except (TimeoutError, StopAsyncIteration):
        return True
    return False


def test_topic_names_match_the_store_outbox() -> None:
    assert (TOPIC_SUBMITTED, TOPIC_EVENTS) == (sql.TOPIC_SUBMITTED, sql.TOPIC_EVENTS)


def test_subscriber_receives_published_events_of_its_topics(make_bus: MakeBus) -> None:
    async def main() -> None:
        bus = make_bus()
        sub = bus.subscribe(frozenset({TOPIC_EVENTS}))
        await sub.ready()
        first, second = event("j-1", 1), event("j-1", 2)
        await bus.publish(TOPIC_SUBMITTED, "j-1", event("j-1", 0))  # not subscribed to this topic
        await bus.publish(TOPIC_EVENTS, "j-1", first)
        await bus.publish(TOPIC_EVENTS, "j-1", second)
        assert await take(sub, 2) == [first, second]
        sub.close()

    run(main())


def test_per_key_order_is_kept_over_many_events(make_bus: MakeBus) -> None:
    async def main() -> None:
        bus = make_bus()
        sub = bus.subscribe(BOTH)
        await sub.ready()
        jobs = [f"j-{i}" for i in range(20)]
        records = [(TOPIC_EVENTS, j, event(j, n)) for n in range(50) for j in jobs]
        for start in range(0, len(records), 250):
            await bus.publish_batch(records[start : start + 250])
        got = await take(sub, len(records))
        for j in jobs:
            assert [p["data"]["n"] for p in got if p["job_id"] == j] == list(range(50))
        sub.close()

    run(main())


def test_two_subscribers_each_get_every_event(make_bus: MakeBus) -> None:
    async def main() -> None:
        bus = make_bus()
        a, b = bus.subscribe(BOTH), bus.subscribe(BOTH)
        await a.ready()
        await b.ready()
        sent = [event(f"j-{n % 3}", n) for n in range(30)]
        await bus.publish_batch([(TOPIC_EVENTS, p["job_id"], p) for p in sent])
        ids = [p["event_id"] for p in sent]
        got_a, got_b = await asyncio.gather(take(a, 30), take(b, 30))
        assert sorted(p["event_id"] for p in got_a) == sorted(ids)
        assert sorted(p["event_id"] for p in got_b) == sorted(ids)
        a.close()
        b.close()

    run(main())


def test_a_repeated_event_id_is_delivered_once(make_bus: MakeBus) -> None:
    async def main() -> None:
        bus = make_bus()
        sub = bus.subscribe(BOTH)
        await sub.ready()
        dup, last = event("j-1", 1), event("j-1", 2)
        await bus.publish(TOPIC_EVENTS, "j-1", dup)
        await bus.publish_batch([(TOPIC_EVENTS, "j-1", dup), (TOPIC_EVENTS, "j-1", dict(dup))])
        await bus.publish(TOPIC_EVENTS, "j-1", last)
        assert [p["event_id"] for p in await take(sub, 2)] == [dup["event_id"], last["event_id"]]
        assert await nothing_more(sub)
        sub.close()

    run(main())


def test_close_ends_an_iteration_in_progress(make_bus: MakeBus) -> None:
    async def main() -> None:
        bus = make_bus()
        sub = bus.subscribe(BOTH)
        await sub.ready()
        got: list[dict[str, Any]] = []

        async def read() -> None:
            async for payload in sub:
                got.append(payload)

        reader = asyncio.create_task(read())
        await bus.publish(TOPIC_EVENTS, "j-1", event("j-1", 1))
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.02)
        sub.close()
        await asyncio.wait_for(reader, 5)
        assert len(got) == 1
        await bus.publish(TOPIC_EVENTS, "j-1", event("j-1", 2))  # a closed subscription gets nothing

    run(main())


def test_publish_batch_returns_once_acknowledged(make_bus: MakeBus) -> None:
    async def main() -> None:
        bus = make_bus()
        sub = bus.subscribe(BOTH)
        await sub.ready()
        batch = [(TOPIC_SUBMITTED, "j-1", event("j-1", 0))] + [
            (TOPIC_EVENTS, "j-1", event("j-1", n)) for n in range(1, 100)
        ]
        await bus.publish_batch(batch)
        await bus.publish_batch([])
        got = await take(sub, 100)
        assert sorted(p["data"]["n"] for p in got) == list(range(100))
        assert [p["data"]["n"] for p in got if p["data"]["n"] > 0] == list(range(1, 100))
        sub.close()

    run(main())


def test_a_slow_subscriber_is_dropped_not_buffered(make_bus: MakeBus) -> None:
    async def main() -> None:
        bus = make_bus(queue=5)
        slow, other = bus.subscribe(BOTH), bus.subscribe(frozenset({TOPIC_SUBMITTED}))
        await slow.ready()
        await bus.publish_batch([(TOPIC_EVENTS, "j-1", event("j-1", n)) for n in range(20)])
        await asyncio.sleep(0.5)  # let it all arrive while nobody reads
        rest = [p async for p in slow]  # the iterator ends instead of growing without bound
        assert len(rest) <= 5
        # The bus itself is fine: a subscriber that keeps up still gets events.
        await other.ready()
        fresh = event("j-2", 0)
        await bus.publish(TOPIC_SUBMITTED, "j-2", fresh)
        assert await take(other, 1) == [fresh]
        other.close()

    run(main())


def test_kafka_publish_to_an_unreachable_broker_fails_fast(tmp_path: Path) -> None:
    bus = KafkaBus(KafkaBusConfig(f"127.0.0.1:{free_port()}", ack_timeout_s=1.0))

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(BusUnavailable):
            await bus.publish_batch([(TOPIC_EVENTS, "j-1", event("j-1", 1))])
        assert time.monotonic() - started < 5

    try:
        run(main())
    finally:
        bus.close()
