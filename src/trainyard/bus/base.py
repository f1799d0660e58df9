"""The event bus: committed job events fanned out to live subscribers. One interface; memory and Kafka.

A payload is the store's event record as a JSON-able dict: ``schema`` (version), ``event_id`` (a
unique uuid, so consumers dedupe), ``job_id``, ``team``, ``type``, ``from_status``, ``to_status``,
``attempt``, ``at`` and ``data``. Records are keyed by job id, which keeps one job's events in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

# The outbox's topics (the store writes these names); a job's first event goes to TOPIC_SUBMITTED,
# every later one to TOPIC_EVENTS.
TOPIC_SUBMITTED = "job.submitted"
TOPIC_EVENTS = "job.events"
JOB_TOPICS: tuple[str, ...] = (TOPIC_SUBMITTED, TOPIC_EVENTS)

Record = tuple[str, str, dict[str, Any]]
"""(topic, key, payload): one event to publish."""


class BusUnavailable(Exception):
    """The bus did not acknowledge a publish in time. Nothing may be assumed delivered: the caller
    keeps the events (the outbox rows stay unsent) and tries again later."""


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def ready(self) -> None:
        """Return once every event published from now on will be delivered to this subscription."""
        ...

    def close(self) -> None:
        """Stop receiving; an iteration in progress ends."""
        ...


class EventBus(Protocol):
    async def publish(self, topic: str, key: str, payload: dict[str, Any]) -> None: ...

    async def publish_batch(self, records: Sequence[Record]) -> None:
        """Publish in order; return only when every record is acknowledged, else raise
        ``BusUnavailable`` (some records may have been delivered: consumers dedupe by event id)."""
        ...

    def subscribe(self, topics: frozenset[str]) -> Subscription:
        """Live events of ``topics`` from (about) now on; ``await sub.ready()`` for a guarantee."""
        ...

    async def ready(self) -> None:
        """Return once the bus delivers to subscribers what is published from now on."""
        ...

    def close(self) -> None: ...
