from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class EventBus(Protocol):
    async def publish(self, topic: str, key: str, payload: dict[str, Any]) -> None: ...

    def subscribe(self, topics: frozenset[str]) -> Subscription: ...
