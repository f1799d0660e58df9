"""The Kafka event bus (confluent-kafka / librdkafka).

Publishing: one idempotent producer (acks=all), records keyed by job id, so one job's events land on
one partition in order, even across producer retries. ``publish_batch`` produces everything, then
waits for every delivery report; a broker that does not acknowledge within ``ack_timeout_s`` makes
it raise ``BusUnavailable`` instead of hanging, and the caller keeps the events.

Subscribing: one background consumer thread per bus instance reads every partition of the job
topics from the current end of the log and fans payloads out to local asyncio queues, deduplicated
by event id (delivery is at-least-once). Each replica must see every event, not a share of them, so
the consumer is *assigned* all partitions rather than joining a consumer group: a group would only
add a rebalance (seconds, on a new group) before the first event and a coordinator to depend on. Its
group id is still unique per process, and nothing is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from trainyard.bus.base import JOB_TOPICS, BusUnavailable, Record
from trainyard.bus.fanout import QueueSubscription, RecentIds

log = logging.getLogger(__name__)

Options = Mapping[str, str | int | float | bool]


@dataclass(frozen=True)
class KafkaBusConfig:
    """How to reach Kafka and shape the topics. ``options`` are passed to librdkafka as they are
    (``security.protocol``, ``sasl.*``, ``ssl.*``, ``compression.type`` …)."""

    bootstrap: str
    """``host:port[,host:port…]``"""
    topics: tuple[str, ...] = JOB_TOPICS
    """Logical topics this bus creates and (for subscribers) reads."""
    topic_prefix: str = ""
    """Prepended to every topic name on the broker: one cluster can hold several installations."""
    partitions: int = 6
    replication_factor: int = 1
    ack_timeout_s: float = 5.0
    """How long a publish may wait for the broker's acknowledgement before ``BusUnavailable``."""
    ready_timeout_s: float = 10.0
    subscriber_queue: int = 10_000
    dedupe_window: int = 100_000
    partition_refresh_s: float = 30.0
    """How often the consumer looks for partitions added to the topics."""
    client_id: str = "trainyard"
    options: Options = field(default_factory=dict)

    def physical(self, topic: str) -> str:
        return self.topic_prefix + topic

    def logical(self, topic: str) -> str:
        return topic[len(self.topic_prefix) :] if topic.startswith(self.topic_prefix) else topic

    def client_config(self) -> dict[str, Any]:
        """Settings shared by every client this bus (or the replay check) creates."""
        return {
            "bootstrap.servers": self.bootstrap,
            "client.id": self.client_id,
            "logger": _ClientLog(logging.getLogger("trainyard.bus.librdkafka"), None),
            "error_cb": _client_error,
            **self.options,
        }


class _ClientLog(logging.LoggerAdapter[logging.Logger]):
    """librdkafka's log, which it would otherwise print to stderr. A broker that is down makes every
    client log a connection failure at error level each time it retries; callers already report the
    outage once (BusUnavailable), so those lines are demoted to debug."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if level >= logging.WARNING and args and args[0] == "FAIL":
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


def _client_error(err: KafkaError) -> None:
    # Transport errors (a broker down) are retried inside librdkafka and reach callers as timeouts
    # (BusUnavailable), which they report once per outage.
    log.debug("Kafka client error: %s", err)


class _Deliveries:
    """Delivery reports of one batch; librdkafka calls ``report`` from ``flush``/``poll``."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.acked = 0
        self.failed = 0
        self.first_error: KafkaError | None = None

    def report(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.acked += 1
            return
        self.failed += 1
        if self.first_error is None:
            self.first_error = err

    @property
    def done(self) -> bool:
        return self.acked + self.failed >= self.expected


def ensure_topics(admin: AdminClient, config: KafkaBusConfig, timeout_s: float) -> None:
    """Create any of the configured topics that does not exist yet; BusUnavailable if unreachable."""
    names = [config.physical(t) for t in config.topics]
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as e:
        raise BusUnavailable(f"Kafka at {config.bootstrap} is unreachable: {e}") from e
    missing = [n for n in names if n not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(n, config.partitions, config.replication_factor) for n in missing],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s + 1)
        except KafkaException as e:
            # Another replica may have created it in the meantime.
            err = e.args[0] if e.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise BusUnavailable(f"cannot create topic {name}: {e}") from e
        except TimeoutError as e:
            raise BusUnavailable(f"cannot create topic {name}: timed out") from e
        log.info("created Kafka topic %s (%d partitions)", name, config.partitions)


class KafkaBus:
    """The event bus on Kafka. Thread-safe; subscriptions belong to the loop that made them."""

    def __init__(self, config: KafkaBusConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._producer_fatal = False
        self._admin: AdminClient | None = None
        self._topics_ok = False
        self._subs: set[QueueSubscription] = set()
        self._consumer_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._assigned = threading.Event()
        self._closed = False
        self.group_id = f"trainyard-live-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    # ---- clients -------------------------------------------------------------------------------
    def _on_producer_error(self, err: KafkaError) -> None:
        # A fatal error leaves the idempotent producer unusable: replace it before the next batch.
        if err.fatal():
            log.error("Kafka producer fatal error, replacing the producer: %s", err)
            self._producer_fatal = True
        else:
            _client_error(err)

    def _get_producer(self) -> Producer:
        with self._lock:
            if self._producer is not None and self._producer_fatal:
                self._discard(self._producer)
            if self._producer is None:
                self._producer_fatal = False
                self._producer = Producer(
                    {
                        **self.config.client_config(),
                        "enable.idempotence": True,
                        "acks": "all",
                        "linger.ms": 5,
                        # Bounds the whole life of a record in the client (queue, retries, in
                        # flight): past it the report is a timeout, so a flush can never hang.
                        "message.timeout.ms": int(self.config.ack_timeout_s * 1000),
                        # Hash keys as the Java client does, so other producers agree on partitions.
                        "partitioner": "murmur2_random",
                        "error_cb": self._on_producer_error,
                    }
                )
            return self._producer

    def _discard(self, producer: Producer) -> None:
        """Drop a producer that failed a batch; the next publish makes a new one.

        After timeouts and purges, the old producer's idempotence state (its producer id, epoch and
        sequence numbers) may no longer match the broker's, which can fence it for good; a new
        producer id starts clean. Its unsent records are dropped too, so they cannot go out later,
        after the caller has queued them again."""
        if self._producer is producer:
            self._producer = None
        producer.purge(in_queue=True, in_flight=True)
        producer.poll(0)

    def _ensure_topics(self) -> None:
        if self._topics_ok:
            return
        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(self.config.client_config())
            admin = self._admin
        ensure_topics(admin, self.config, self.config.ack_timeout_s)
        self._topics_ok = True

    # ---- publishing ----------------------------------------------------------------------------
    async def publish(self, topic: str, key: str, payload: dict[str, Any]) -> None:
        await self.publish_batch(((topic, key, payload),))

    async def publish_batch(self, records: Sequence[Record]) -> None:
        if not records:
            return
        if self._closed:
            raise BusUnavailable("the bus is closed")
        # librdkafka's flush blocks: wait in a worker thread so the event loop keeps serving.
        await asyncio.to_thread(self._publish_sync, records)

    def _publish_sync(self, records: Sequence[Record]) -> None:
        self._ensure_topics()
        producer = self._get_producer()
        deliveries = _Deliveries(len(records))
        deadline = time.monotonic() + self.config.ack_timeout_s + 1.0
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        physical = self.config.physical
        for topic, key, payload in records:
            value = dumps(payload).encode()
            while True:
                try:
                    producer.produce(
                        physical(topic), value=value, key=key.encode(), on_delivery=deliveries.report
                    )
                    break
                except BufferError:
                    # The client's queue is full: serve delivery reports to make room.
                    if time.monotonic() > deadline:
                        self._give_up(producer)
                        raise BusUnavailable("Kafka producer queue stayed full") from None
                    producer.poll(0.05)
                except KafkaException as e:
                    self._give_up(producer)
                    raise BusUnavailable(f"Kafka refused a record: {e}") from e
        while not deliveries.done:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            producer.flush(left)
        if deliveries.failed or not deliveries.done:
            err = deliveries.first_error
            self._give_up(producer)
            raise BusUnavailable(
                f"Kafka acknowledged {deliveries.acked} of {len(records)} records"
                + (f": {err}" if err is not None else "")
            )

    def _give_up(self, producer: Producer) -> None:
        with self._lock:
            self._discard(producer)

    # ---- subscribing ---------------------------------------------------------------------------
    def subscribe(self, topics: frozenset[str]) -> QueueSubscription:
        if self._closed:
            raise BusUnavailable("the bus is closed")
        sub = QueueSubscription(
            topics,
            self.config.subscriber_queue,
            self._detach,
            loop=asyncio.get_running_loop(),
            ready=self.ready,
        )
        with self._lock:
            self._subs.add(sub)
        self._start_consumer()
        return sub

    def _detach(self, sub: QueueSubscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    async def ready(self) -> None:
        """Start the consumer if needed and wait until it reads every partition: from then on,
        every event published reaches the subscribers. BusUnavailable after ``ready_timeout_s``."""
        self._start_consumer()
        # Connect the producer now too: its first batch would otherwise wait for the connection
        # and the idempotent producer id (the first live updates after a start came ~0.5 s late).
        self._get_producer()
        if self._assigned.is_set():
            return
        if not await asyncio.to_thread(self._assigned.wait, self.config.ready_timeout_s):
            raise BusUnavailable(f"Kafka at {self.config.bootstrap} did not answer the consumer in time")

    def _start_consumer(self) -> None:
        with self._lock:
            if self._consumer_thread is not None or self._closed:
                return
            self._consumer_thread = threading.Thread(
                target=self._consume_loop, name="trainyard-kafka-consumer", daemon=True
            )
            self._consumer_thread.start()

    def _consume_loop(self) -> None:
        consumer = Consumer(
            {
                **self.config.client_config(),
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "latest",
                # Live views promise updates within a second: don't let a broker hold an empty fetch
                # for librdkafka's default 500 ms (an idle replica pays ~20 small fetches a second).
                "fetch.wait.max.ms": 50,
            }
        )
        assigned: set[tuple[str, int]] = set()
        next_refresh = 0.0
        failing = False
        seen = RecentIds(self.config.dedupe_window)
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_refresh:
                    try:
                        self._assign(consumer, assigned)
                        next_refresh = time.monotonic() + self.config.partition_refresh_s
                        failing = False
                    except (KafkaException, BusUnavailable) as e:
                        if not failing:  # once per outage, not once per retry
                            log.warning("Kafka consumer cannot read the job topics yet: %s", e)
                            failing = True
                        next_refresh = time.monotonic() + 1.0
                if not assigned:
                    self._stop.wait(0.2)
                    continue
                # consume(n, timeout) waits for n messages or the timeout, which would hold a lone
                # event for the whole timeout: wait for the first, then take what else is ready.
                first_msg = consumer.poll(0.2)
                if first_msg is not None:
                    self._dispatch([first_msg, *consumer.consume(499, 0)], seen)
        except Exception:
            log.exception("Kafka consumer thread failed; live updates fall back to polling")
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer, assigned: set[tuple[str, int]]) -> None:
        self._ensure_topics()
        timeout = self.config.ack_timeout_s
        metadata = consumer.list_topics(timeout=timeout)
        new: list[TopicPartition] = []
        first = not assigned
        for topic in self.config.topics:
            name = self.config.physical(topic)
            meta = metadata.topics.get(name)
            if meta is None or meta.error is not None:
                raise BusUnavailable(f"topic {name} has no metadata yet")
            for p in meta.partitions:
                if (name, p) in assigned:
                    continue
                if first:
                    # Start at the current end: the bus carries what happens from now on. An
                    # explicit offset (not OFFSET_END) makes "ready" exact: nothing produced after
                    # this point can be skipped.
                    _low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout)
                    new.append(TopicPartition(name, p, high))
                else:
                    new.append(TopicPartition(name, p, OFFSET_BEGINNING))  # added later: all of it is new
        if new:
            consumer.incremental_assign(new)
            assigned.update((tp.topic, tp.partition) for tp in new)
        self._assigned.set()

    def _dispatch(self, messages: list[Message], seen: RecentIds) -> None:
        with self._lock:
            subs = list(self._subs)
        batches: dict[QueueSubscription, list[dict[str, Any]]] = {}
        for m in messages:
            err = m.error()
            if err is not None:
                log.debug("Kafka consumer: %s", err)
                continue
            try:
                payload = json.loads(m.value() or b"")
            except ValueError:
                log.warning("skipping a non-JSON record at %s[%s]@%s", m.topic(), m.partition(), m.offset())
                continue
            if not isinstance(payload, dict) or not seen.first_time(payload):
                continue
            topic = self.config.logical(m.topic() or "")
            for sub in subs:
                if topic in sub.topics:
                    batches.setdefault(sub, []).append(payload)
        for sub, payloads in batches.items():
            assert sub.loop is not None
            try:
                # One hand-over per subscriber per poll, not per event: each wakes its loop.
                sub.loop.call_soon_threadsafe(sub.offer_many, payloads)
            except RuntimeError:  # its loop is closed: the subscriber is gone
                self._detach(sub)

    # ---- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the consumer, end every subscription, drop unsent records."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        thread = self._consumer_thread
        if thread is not None:
            thread.join(timeout=self.config.ack_timeout_s + 2)
        with self._lock:
            subs = list(self._subs)
            producer, self._producer = self._producer, None
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for sub in subs:
            if sub.loop is None or sub.loop is running:
                sub.close()
            else:
                with contextlib.suppress(RuntimeError):  # its loop is already closed
                    sub.loop.call_soon_threadsafe(sub.close)
        if producer is not None:
            producer.purge()
            producer.flush(0)
