"""The queue board as this replica answers it: the leader's own, or the copy it published."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from trainyard.server.queueboard import BOARD_KEY, BoardReader, QueueBoard
from trainyard.server.services.blocking import off_loop
from trainyard.server.services.replica import Replica

if TYPE_CHECKING:
    from trainyard.store.ports import SchedulerState


class QueueBoards:
    """Each pending job's place in its team's queue and estimated start.

    The leader's scheduler loop posts ``local`` every cycle (and publishes it to the store); a
    follower answers from the published copy, re-read when it is a second old."""

    def __init__(self, store: SchedulerState, replica: Replica) -> None:
        self.store = store
        self.replica = replica
        self.local = QueueBoard()  # the leader's, published for every replica
        self._reader = BoardReader()  # this replica's copy of the published board
        self._reader_lock = asyncio.Lock()

    def publish(self) -> None:
        """Write ``local`` to the store for the other replicas (blocking)."""
        self.store.put_scheduler_state(BOARD_KEY, self.local.to_json())

    async def current(self) -> QueueBoard:
        """The board to answer from: the leader's own, else the published copy."""
        if self.replica.is_leader:
            return self.local
        if self._reader.stale():
            async with self._reader_lock:
                if self._reader.stale():
                    got = await off_loop(self.store.get_scheduler_state, BOARD_KEY)
                    self._reader.replace(QueueBoard.from_json(got[0]) if got else QueueBoard())
        return self._reader.board
