"""In-process signals between the parts of one control plane.

Notifications are hints; the database is the truth: every loop also polls, so a lost hint only
costs latency, never correctness.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from trainyard.proto.trainyard.v1 import worker_pb2 as pb


class Kick:
    """A level-triggered wake-up: many kicks before a wait collapse into one."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        """Wake the waiter (or the next one to wait)."""
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a kick; True when kicked (the kick is consumed)."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        self._event.clear()
        return True


class WorkerChannels:
    """Messages for each connected worker's lease stream (assignments and commands)."""

    def __init__(self) -> None:
        self._queues: dict[str, list[asyncio.Queue[pb.LeaseMessage]]] = defaultdict(list)

    def connect(self, worker_id: str) -> asyncio.Queue[pb.LeaseMessage]:
        """A new lease stream of the worker: the queue its messages are put on."""
        q: asyncio.Queue[pb.LeaseMessage] = asyncio.Queue()
        self._queues[worker_id].append(q)
        return q

    def disconnect(self, worker_id: str, q: asyncio.Queue[pb.LeaseMessage]) -> None:
        """The stream behind ``q`` ended."""
        qs = self._queues.get(worker_id)
        if qs and q in qs:
            qs.remove(q)
            if not qs:
                del self._queues[worker_id]

    def connected(self, worker_id: str) -> bool:
        """Whether the worker has a lease stream on this replica."""
        return bool(self._queues.get(worker_id))

    def send(self, worker_id: str, msg: pb.LeaseMessage) -> bool:
        """Deliver to the worker's newest stream; False when it has none (it gets it on reconnect)."""
        qs = self._queues.get(worker_id)
        if not qs:
            return False
        qs[-1].put_nowait(msg)
        return True
