"""The replay check: does the Kafka event log hold exactly the job history the database holds?

It reads ``job.submitted`` and ``job.events`` from the beginning up to the end they had when the check
started, drops duplicates by event id (delivery is at-least-once), rebuilds every job's history in
memory and compares it with the store's: per job, the same event ids in the same order with the same
statuses. Only events whose outbox rows are marked sent must be in the log; the others are pending.

A job's history is rebuilt topic by topic in ``JOB_TOPICS`` order (its one ``job.submitted`` event
is its first, by construction), each topic in log order; Kafka orders a job's records within a
topic because they share a key, hence a partition.

Snapshot order matters on a live system: the database is read *before* the log's end offsets are
taken, so every event marked sent in that snapshot was acknowledged below those offsets; events the
log holds but the snapshot does not are looked up again and, if they exist now, count as late (newer
than the snapshot), not extra.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from trainyard.bus.base import JOB_TOPICS, BusUnavailable
from trainyard.bus.kafka import KafkaBusConfig, Options
from trainyard.store.ports import EventLog

_SHOW = 5  # ids named in the summary of each kind of problem


@dataclass(frozen=True)
class _Entry:
    event_id: str
    job_id: str
    from_status: str | None
    to_status: str | None


@dataclass
class ReplayReport:
    jobs_compared: int = 0
    events_read: int = 0
    """Records read from the log, duplicates included."""
    duplicates_dropped: int = 0
    missing: list[str] = field(default_factory=list)
    """Event ids marked sent in the database but absent from the log."""
    extra: list[str] = field(default_factory=list)
    """Event ids in the log that the database does not hold."""
    out_of_order_jobs: list[str] = field(default_factory=list)
    """Jobs whose events the log holds in another order than the database."""
    mismatched: list[str] = field(default_factory=list)
    """Event ids whose job or statuses differ between the log and the database."""
    pending: int = 0
    """Events whose outbox rows are not marked sent yet (not expected in the log)."""
    late: int = 0
    """Events in the log committed after the database snapshot (not compared)."""
    undecodable: int = 0
    """Records that are not a JSON event."""

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.extra or self.out_of_order_jobs or self.mismatched or self.undecodable
        )

    def summary(self) -> str:
        head = "replay OK" if self.ok else "replay FAILED"
        parts = [
            f"{head}: {self.jobs_compared} jobs, {self.events_read} records read "
            f"({self.duplicates_dropped} duplicates dropped), {len(self.missing)} missing, "
            f"{len(self.extra)} extra, {len(self.out_of_order_jobs)} jobs out of order, "
            f"{len(self.mismatched)} mismatched, {self.pending} pending, {self.late} late"
        ]
        for name, ids in (
            ("missing", self.missing),
            ("extra", self.extra),
            ("out of order", self.out_of_order_jobs),
            ("mismatched", self.mismatched),
        ):
            if ids:
                more = f" and {len(ids) - _SHOW} more" if len(ids) > _SHOW else ""
                parts.append(f"{name}: {', '.join(ids[:_SHOW])}{more}")
        if self.undecodable:
            parts.append(f"{self.undecodable} records are not JSON events")
        return "; ".join(parts)


def replay(
    bootstrap: str,
    store: EventLog,
    timeout_s: float = 60.0,
    *,
    topic_prefix: str = "",
    options: Options | None = None,
) -> ReplayReport:
    """Compare the event log at ``bootstrap`` with ``store``. Blocking; BusUnavailable when the log
    cannot be read to its end within ``timeout_s``."""
    config = KafkaBusConfig(bootstrap, topic_prefix=topic_prefix, options=dict(options or {}))
    report = ReplayReport()

    # 1. The database, first (see the module docstring): every job's events in commit order.
    expected: dict[str, dict[str, list[_Entry]]] = {}
    sent: set[str] = set()
    known: set[str] = set()
    after = 0
    while page := store.outbox_events(after):
        for outbox_id, topic, is_sent, e in page:
            after = outbox_id
            known.add(e.event_id)
            if is_sent:
                sent.add(e.event_id)
            else:
                report.pending += 1
            expected.setdefault(e.job_id, {}).setdefault(topic, []).append(
                _Entry(e.event_id, e.job_id, e.from_status, e.to_status)
            )

    # 2. The log, rebuilt into a fresh in-memory store: job → topic → events in log order.
    logged: dict[str, dict[str, list[_Entry]]] = {}
    seen: set[str] = set()
    for topic, payload in _read_log(config, timeout_s, report):
        event_id = payload.get("event_id")
        job_id = payload.get("job_id")
        if not isinstance(event_id, str) or not isinstance(job_id, str):
            report.undecodable += 1
            continue
        if event_id in seen:
            report.duplicates_dropped += 1
            continue
        seen.add(event_id)
        logged.setdefault(job_id, {}).setdefault(topic, []).append(
            _Entry(event_id, job_id, payload.get("from_status"), payload.get("to_status"))
        )

    unknown = seen - known
    late = store.existing_event_ids(unknown) if unknown else set()
    report.late = len(late)
    report.extra = sorted(unknown - late)
    report.missing = sorted(sent - seen)

    # 3. Per job, the same events in the same order with the same statuses.
    db_entries = {x.event_id: x for topics in expected.values() for xs in topics.values() for x in xs}
    for job_id in sorted(expected.keys() | logged.keys()):
        want = [x for t in JOB_TOPICS for x in expected.get(job_id, {}).get(t, []) if x.event_id in seen]
        got = [x for t in JOB_TOPICS for x in logged.get(job_id, {}).get(t, []) if x.event_id in known]
        if not want and not got:
            continue
        report.jobs_compared += 1
        for x in got:
            if x != db_entries[x.event_id]:
                report.mismatched.append(x.event_id)
        if [x.event_id for x in got] != [x.event_id for x in want]:
            report.out_of_order_jobs.append(job_id)
    return report


def _read_log(
    config: KafkaBusConfig, timeout_s: float, report: ReplayReport
) -> list[tuple[str, dict[str, Any]]]:
    """Every record of the job topics from the beginning to the end of the log as the check starts,
    as (logical topic, payload), in log order within each partition."""
    deadline = time.monotonic() + timeout_s
    consumer = Consumer(
        {
            **config.client_config(),
            # A fresh group that commits nothing: the check never moves anyone's offsets.
            "group.id": f"trainyard-replay-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        parts = _partitions(consumer, config, max(0.1, deadline - time.monotonic()))
        # Each partition is read up to its end: the larger of the end the broker lists now and
        # the high watermark in the first fetch response for it. Either alone would do on a
        # broker that reports both exactly; taking both, a broker that lists a stale end cannot
        # cut the check short.
        listed: dict[TopicPartition, int] = {}
        position: dict[TopicPartition, int] = {}
        for tp in parts:
            low, high = consumer.get_watermark_offsets(tp, timeout=max(0.1, deadline - time.monotonic()))
            listed[tp], position[tp] = high, low
        end: dict[TopicPartition, int] = {}
        if parts:
            consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in parts])
        todo = set(parts)
        while todo:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BusUnavailable(
                    f"replay did not reach the end of the log in {timeout_s:.0f}s "
                    f"({len(todo)} partitions unfinished)"
                )
            for m in consumer.consume(10_000, min(left, 0.5)):
                if m.error() is not None:
                    continue
                tp = TopicPartition(m.topic() or "", m.partition() or 0)
                offset = m.offset() or 0
                if tp not in todo or (tp in end and offset >= end[tp]):
                    continue  # past the end taken at the start: newer than the database snapshot
                position[tp] = offset + 1
                report.events_read += 1
                try:
                    payload = json.loads(m.value() or b"")
                except ValueError:
                    payload = None
                if isinstance(payload, dict):
                    out.append((config.logical(tp.topic), payload))
                else:
                    report.undecodable += 1
            for tp in list(todo):
                if tp not in end:
                    _low, fetched = consumer.get_watermark_offsets(tp, cached=True)
                    if fetched < 0:
                        continue  # no fetch response for it yet
                    end[tp] = max(fetched, listed[tp])
                if position[tp] >= end[tp]:
                    todo.discard(tp)
    except KafkaException as e:
        raise BusUnavailable(f"cannot read the event log at {config.bootstrap}: {e}") from e
    finally:
        consumer.close()
    return out


def _partitions(consumer: Consumer, config: KafkaBusConfig, timeout_s: float) -> list[TopicPartition]:
    """Every partition of the job topics that exist (a topic never created never had a record)."""
    metadata = consumer.list_topics(timeout=timeout_s)
    out: list[TopicPartition] = []
    for topic in config.topics:
        name = config.physical(topic)
        meta = metadata.topics.get(name)
        if meta is not None and meta.error is None:
            out.extend(TopicPartition(name, p) for p in sorted(meta.partitions))
    return out
