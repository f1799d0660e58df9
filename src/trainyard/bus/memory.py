"""In-process event bus: the embedded default, and a supported fake for users' tests.

Same semantics as the Kafka bus where a subscriber can see them: events of a key arrive in order, a
repeated event id is delivered once, a subscriber that falls too far behind is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainyard.bus.base import Record
from trainyard.bus.fanout import QueueSubscription, RecentIds

MemorySubscription = QueueSubscription


class MemoryBus:
    def __init__(self, maxsize: int = 10000, dedupe_window: int = 100_000) -> None:
        self._subs: set[QueueSubscription] = set()
        self._maxsize = maxsize
        self._seen = RecentIds(dedupe_window)

    async def publish(self, topic: str, key: str, payload: dict[str, Any]) -> None:
        if not self._seen.first_time(payload):
            return
        for sub in list(self._subs):
            if topic in sub.topics:
                sub.offer(payload)

    async def publish_batch(self, records: Sequence[Record]) -> None:
        for topic, key, payload in records:
            await self.publish(topic, key, payload)

    def subscribe(self, topics: frozenset[str]) -> QueueSubscription:
        sub = QueueSubscription(topics, self._maxsize, self._subs.discard)
        self._subs.add(sub)
        return sub

    async def ready(self) -> None:
        return None

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()
