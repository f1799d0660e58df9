"""The undo log that makes an all-or-nothing attempt cheap to abandon.

Placing a gang, or preempting for a job, changes workers and teams step by step (one replica at a
time, one victim at a time) and must leave no trace if a later step fails. Each change records how to
undo itself while an attempt is open; the attempt then commits (forget the log) or rolls back (undo
in reverse order). Outside an attempt nothing is recorded, so the common single-replica placement
pays nothing.

The log holds closures over the cycle's state, so it is emptied at the end of every attempt: that is
what keeps the cycle free of reference cycles (``decide`` pauses the cyclic garbage collector).
"""

from __future__ import annotations

from collections.abc import Callable

Undo = Callable[[], None]


class UndoLog:
    """The open attempt's undo steps, or ``None`` in ``entries`` while no attempt is open."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[Undo] | None = None

    def begin(self) -> None:
        """Open an attempt: changes from now on are recorded."""
        self.entries = []

    def record(self, undo: Undo) -> None:
        """Remember how to undo a change, if an attempt is open."""
        if self.entries is not None:
            self.entries.append(undo)

    def commit(self) -> None:
        """Keep the attempt's changes."""
        self.entries = None

    def rollback(self) -> None:
        """Undo the attempt's changes, the latest first."""
        entries, self.entries = self.entries or [], None
        for undo in reversed(entries):
            undo()
