"""Where each pending job stands: its place in its team's queue and an estimated latest start.

The leader's scheduler knows both (the queue order of a cycle, and :mod:`trainyard.scheduler.eta`
run forward from the same snapshot); every replica must answer ``GET /v1/jobs/{id}`` alike. So the
leader publishes one board to the store (``scheduler_state``, key ``queue``) at most once a
second, and each replica keeps the latest copy in memory: a job read costs a dict lookup, never a
count over the pending jobs (which cost four fifths of the status-read rate when it was tried).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

BOARD_KEY = "queue"
PUBLISH_EVERY_S = 1.0
REFRESH_EVERY_S = 1.0
ESTIMATE_EVERY_S = 10.0
"""ETAs come from up to a few dozen scheduler runs on a simulated clock: redone every few seconds,
not every cycle, since they move with job ends (minutes), not with each placement."""
ESTIMATE_AFTER_S = 3.0
"""Estimate only once some job has waited this long: a queue that drains in seconds needs none."""


@dataclass
class QueueBoard:
    """The board the leader publishes: each waiting job's place and estimated start."""

    positions: dict[str, int] = field(default_factory=dict)
    """Pending job -> 1-based place among the waiting jobs of its team's queue."""
    starts: dict[str, float | None] = field(default_factory=dict)
    """Pending job -> latest estimated start (unix s); ``None``: beyond the estimate's horizon."""
    as_of: float = 0.0
    estimated_at: float = 0.0

    def lookup(self, job_id: str) -> dict[str, Any]:
        """The queue fields of a job's view (both None for a job not on the board)."""
        return {
            "queue_position": self.positions.get(job_id),
            "estimated_start_at": self.starts.get(job_id),
        }

    def to_json(self) -> dict[str, Any]:
        """The board as stored in ``scheduler_state``."""
        # Rounded: a second is far finer than any estimate, and the board is rewritten every second.
        return {
            "as_of": self.as_of,
            "estimated_at": self.estimated_at,
            "positions": self.positions,
            "starts": {j: (None if t is None else round(t)) for j, t in self.starts.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueueBoard:
        """A board read back from ``scheduler_state``."""
        return cls(
            positions={str(k): int(v) for k, v in data.get("positions", {}).items()},
            starts={str(k): (None if v is None else float(v)) for k, v in data.get("starts", {}).items()},
            as_of=float(data.get("as_of", 0.0)),
            estimated_at=float(data.get("estimated_at", 0.0)),
        )


def waiting_positions(
    queue_position: Mapping[str, int], team_of: Mapping[str, str], waiting: Iterable[str]
) -> dict[str, int]:
    """Renumber each team's queue over the jobs still waiting after a cycle (the cycle's own
    positions count the jobs it just placed)."""
    by_team: dict[str, list[str]] = {}
    for job_id in waiting:
        if job_id in queue_position:
            team = team_of[job_id]
            ids = by_team.get(team)
            if ids is None:
                ids = by_team[team] = []
            ids.append(job_id)
    out: dict[str, int] = {}
    for ids in by_team.values():
        # A position is unique within its team's queue: sorted by it alone, with the mapping's own
        # lookup as the key, the C sort compares ints, not (position, id) tuples (every cycle sorts
        # every waiting job: thousands under a stream of submissions).
        ids.sort(key=queue_position.__getitem__)
        out.update(zip(ids, range(1, len(ids) + 1), strict=True))
    return out


class BoardReader:
    """A replica's copy of the board, refreshed from the store at most every ``REFRESH_EVERY_S``."""

    def __init__(self) -> None:
        self.board = QueueBoard()
        self.read_at = 0.0

    def stale(self, now: float | None = None) -> bool:
        """Whether the copy is older than ``REFRESH_EVERY_S``."""
        return (now if now is not None else time.monotonic()) - self.read_at >= REFRESH_EVERY_S

    def replace(self, board: QueueBoard) -> None:
        """Keep a freshly read board."""
        self.board = board
        self.read_at = time.monotonic()
