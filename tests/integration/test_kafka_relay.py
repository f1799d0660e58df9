"""The outbox relay and the replay check against a real store and a real Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from tests.conftest import sqlite_store
from tests.kafka_broker import KafkaBroker
from trainyard.bus.base import JOB_TOPICS, TOPIC_EVENTS
from trainyard.bus.kafka import KafkaBus, KafkaBusConfig
from trainyard.bus.relay import OutboxRelay, id_ranges
from trainyard.bus.replay import replay
from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.model.states import AttemptOutcome
from trainyard.store.sql import FinishReport, Placement, SqlStore

ALICE = User("alice", "vision", "user")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as b:
        yield b


@pytest.fixture
def prefix() -> str:
    return f"r{uuid.uuid4().hex[:8]}."  # a fresh log per test on the module's broker


def run(coro: Coroutine[Any, Any, None], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def make_bus(broker: KafkaBroker, prefix: str, **kw: Any) -> KafkaBus:
    return KafkaBus(KafkaBusConfig(broker.bootstrap, topic_prefix=prefix, partitions=3, **kw))


def run_jobs(store: SqlStore, n: int, worker_name: str = "w1") -> list[str]:
    """Submit n jobs and take each through its whole life: PENDING → SCHEDULED → RUNNING → SUCCEEDED."""
    worker, _ = store.register_worker(
        name=worker_name,
        hostname=worker_name,
        pool="default",
        region=None,
        cpu=1000,
        memory=1 << 40,
        gpu=0,
        gpu_type=None,
        labels={},
        version="t",
    )
    spec = JobSpec.model_validate({"command": ["python", "train.py"]})
    ids = [store.submit(ALICE, spec).job.id for _ in range(n)]
    for lease in store.lease([Placement(j, worker.id, (), 0) for j in ids]):
        assert store.report_started(lease.job_id, lease.attempt, lease.lease_token, worker.id).ok
        done = FinishReport(
            lease.job_id, lease.attempt, lease.lease_token, worker.id, AttemptOutcome.SUCCEEDED, 0
        )
        assert store.report_finished(done).ok
    return ids


def db_history(store: SqlStore, job_ids: list[str]) -> dict[str, list[tuple[str, str | None, str | None]]]:
    return {j: [(e.event_id, e.from_status, e.to_status) for e in store.job_events(j)] for j in job_ids}


def read_log(bootstrap: str, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """Every record of the job topics from the beginning, as (topic, payload), each partition in order.

    A partition is read until the consumer's position reaches the high watermark of a fetch
    response (tansu's ListOffsets answer for the end of a partition is not reliable)."""
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    try:
        md = c.list_topics(timeout=10)
        todo = {(prefix + t, p): 0 for t in JOB_TOPICS for p in md.topics[prefix + t].partitions}
        c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in todo])
        out: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + 30
        while todo and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                assert m.error() is None, m.error()
                out.append((m.topic()[len(prefix) :], json.loads(m.value())))
                todo[(m.topic(), m.partition())] = m.offset() + 1
            for (t, p), pos in list(todo.items()):
                _low, high = c.get_watermark_offsets(TopicPartition(t, p), cached=True)
                if high >= 0 and pos >= high:
                    del todo[(t, p)]
        assert not todo, f"log not read to its end: {todo}"
        return out
    finally:
        c.close()


def log_history(
    records: list[tuple[str, dict[str, Any]]],
) -> dict[str, list[tuple[str, str | None, str | None]]]:
    """Per job, deduplicated by event id, job.submitted first then job.events (each in log order)."""
    seen: set[str] = set()
    out: dict[str, list[tuple[str, str | None, str | None]]] = {}
    for topic in JOB_TOPICS:
        for t, p in records:
            if t == topic and p["event_id"] not in seen:
                seen.add(p["event_id"])
                out.setdefault(p["job_id"], []).append((p["event_id"], p["from_status"], p["to_status"]))
    return out


def test_id_ranges() -> None:
    assert id_ranges([]) == []
    assert id_ranges([4]) == [(4, 4)]
    assert id_ranges([1, 2, 3, 7, 8, 10]) == [(1, 3), (7, 8), (10, 10)]


def test_relay_publishes_every_row_once_in_order_and_marks_it_sent(
    store: SqlStore, broker: KafkaBroker, prefix: str
) -> None:
    jobs = run_jobs(store, 30)
    expected = db_history(store, jobs)
    total = sum(len(v) for v in expected.values())
    assert store.outbox_lag() == total == 30 * 4
    finished: Counter[str] = Counter()

    def count(payloads: list[dict[str, Any]]) -> None:
        finished.update(p["to_status"] for p in payloads if p["to_status"] == "SUCCEEDED")

    bus = make_bus(broker, prefix)
    relay = OutboxRelay(store, bus, batch=50, on_published=count)
    try:

        async def main() -> None:
            assert await relay.drain() == total
            assert await relay.run_once() == 0

        run(main())
    finally:
        bus.close()
    assert store.outbox_lag() == 0 and store.outbox_unsent() == []
    assert finished == {"SUCCEEDED": 30} and relay.published == total
    records = read_log(broker.bootstrap, prefix)
    assert len(records) == total, "every row published exactly once"
    assert Counter(p["event_id"] for _, p in records).most_common(1)[0][1] == 1
    assert {t for t, p in records if p["type"] == "submitted"} == {"job.submitted"}
    assert log_history(records) == expected
    report = replay(broker.bootstrap, store, 30, topic_prefix=prefix)
    assert report.ok, report.summary()
    assert (report.jobs_compared, report.events_read, report.duplicates_dropped) == (30, total, 0)


def test_broker_down_the_outbox_grows_then_drains_in_order(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path / "state.db")
    prefix = "down."
    with KafkaBroker(tmp_path / "kafka") as broker:
        bus = make_bus(broker, prefix, ack_timeout_s=1.5)
        relay = OutboxRelay(store, bus, batch=100)

        async def main() -> None:
            live = bus.subscribe(frozenset(JOB_TOPICS))
            await live.ready()
            before = run_jobs(store, 2, "w0")
            assert await relay.drain() == 8

            broker.stop()
            jobs = run_jobs(store, 50)
            lag = store.outbox_lag()
            assert lag == 50 * 4
            for _ in range(2):
                started = time.monotonic()
                assert await relay.run_once() == 0
                assert time.monotonic() - started < 6, "a publish to a dead broker must give up quickly"
                assert relay.bus_down
            assert store.outbox_lag() == lag, "nothing is marked sent while the broker is down"

            broker.start()  # same port, same data
            deadline = time.monotonic() + 30
            while store.outbox_lag() and time.monotonic() < deadline:
                if await relay.run_once() == 0:
                    await asyncio.sleep(0.2)
            assert store.outbox_lag() == 0 and not relay.bus_down

            everything = before + jobs
            records = read_log(broker.bootstrap, prefix)
            assert log_history(records) == db_history(store, everything)
            report = replay(broker.bootstrap, store, 30, topic_prefix=prefix)
            assert report.ok, report.summary()
            assert report.jobs_compared == 52 and report.missing == []

            # The live subscription survived the outage: it saw the drained events too.
            want = {e for h in db_history(store, jobs).values() for e, _, _ in h}
            got: set[str] = set()

            async def follow() -> None:
                async for p in live:
                    got.add(p["event_id"])
                    if want <= got:
                        return

            await asyncio.wait_for(follow(), 20)
            live.close()

        try:
            run(main(), 90)
        finally:
            bus.close()
            store.close()


def test_replay_is_ok_on_a_consistent_log_with_duplicates_and_pending_rows(
    tmp_path: Path, broker: KafkaBroker, prefix: str
) -> None:
    store = sqlite_store(tmp_path / "state.db")
    bus = make_bus(broker, prefix)
    try:
        jobs = run_jobs(store, 10)
        rows = store.outbox_unsent(1000)
        run(_drain(store, bus, 40))
        # At-least-once: the same events published again (a relay crash before marking) change nothing.
        again = [(r.topic, r.key, r.payload) for r in rows if r.key in jobs[:3]]
        run(bus.publish_batch(again))
        # A committed event not yet relayed is pending, not missing.
        store.cancel(store.submit(ALICE, JobSpec.model_validate({"command": ["x"]})).job.id, "alice")
        report = replay(broker.bootstrap, store, 30, topic_prefix=prefix)
        assert report.ok, report.summary()
        assert report.duplicates_dropped == len(again) == 12
        assert report.events_read == 40 + 12
        assert report.pending == 2 and report.jobs_compared == 10
        assert report.summary().startswith("replay OK")
    finally:
        bus.close()
        store.close()


def test_replay_reports_missing_extra_and_out_of_order_events(
    tmp_path: Path, broker: KafkaBroker, prefix: str
) -> None:
    store = sqlite_store(tmp_path / "state.db")
    bus = make_bus(broker, prefix)
    try:
        jobs = run_jobs(store, 5)
        run(_drain(store, bus, 20))
        assert replay(broker.bootstrap, store, 30, topic_prefix=prefix).ok

        # Missing: an event marked sent that never reached the log (as if the log lost it).
        restarted = store.restart(jobs[0], "alice")
        lost = store.job_events(restarted.id)[-1]
        store.outbox_mark_sent([r.id for r in store.outbox_unsent()])

        # Out of order: a job whose two transitions reached the log swapped.
        other = run_jobs(store, 1, "w2")[0]
        rows = [r for r in store.outbox_unsent() if r.key == other]
        swapped = [rows[0], rows[2], rows[1], rows[3]]
        run(bus.publish_batch([(r.topic, r.key, r.payload) for r in swapped]))
        store.outbox_mark_sent([r.id for r in rows])

        # Extra: an event the database never had.
        ghost = {**rows[1].payload, "event_id": str(uuid.uuid4())}
        run(bus.publish(TOPIC_EVENTS, other, ghost))

        report = replay(broker.bootstrap, store, 30, topic_prefix=prefix)
        assert not report.ok
        assert report.missing == [lost.event_id]
        assert report.extra == [ghost["event_id"]]
        assert report.out_of_order_jobs == [other]
        assert report.mismatched == [] and report.pending == 0
        assert "missing: " + lost.event_id in report.summary()
        assert report.summary().startswith("replay FAILED")
    finally:
        bus.close()
        store.close()


async def _drain(store: SqlStore, bus: KafkaBus, n: int) -> None:
    assert await OutboxRelay(store, bus).drain() == n
