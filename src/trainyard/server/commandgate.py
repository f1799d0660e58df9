"""Whether a heartbeat needs the store to find the worker's commands, or can be answered "nothing".

A worker's commands (cancel, kill a stale attempt, stop a gang rank) come from the rows of the jobs
it reports and of the jobs leased to it; every change to those rows writes a job event (a gang's
stop flag with its rank's or rank 0's). So the replica follows the event ids (``note``: each event's
job, the job's gang and the worker now holding it) and asks the store again only for a worker whose
reported attempts changed, whose jobs, gangs or self had an event since its last look, whose last
look found commands (they repeat until done), or whose last look is ``RECHECK_S`` old (the safety
net for an event the cursor skipped). Pure: the caller reads the events and the store.

The cursor follows ``server.picture``'s gap rule: it stops before an id not yet seen, since event ids
are allocated before their transaction commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from trainyard.server.picture import GAP_GRACE_S, advance

RECHECK_S = 60.0
"""A worker's commands are read from the store at least this often, whatever the events said."""
WATCH_EVERY_S = 1.0
"""How often the replica reads the events that came in (a change made through another replica
reaches a heartbeat's answer within this; commands are pushed on the lease stream at once anyway)."""


@dataclass
class _Look:
    cursor: int  # the event cursor when the worker's commands were last read
    running: frozenset[tuple[str, int, str]]
    at: float  # monotonic seconds
    had_commands: bool


@dataclass
class CommandGate:
    """The events seen (key -> newest event id: job ids, gang ids, worker ids) and each worker's
    last look."""

    cursor: int | None = None  # None: not started (the first read starts at the newest event)
    watched_at: float = float("-inf")
    gap_since: float | None = None
    changed: dict[str, int] = field(default_factory=dict)
    looks: dict[str, _Look] = field(default_factory=dict)

    def watch_due(self, now: float) -> bool:
        """Whether the events should be read before answering a heartbeat."""
        return not 0 <= now - self.watched_at < WATCH_EVERY_S

    def note(
        self, events: Sequence[tuple[int, str, str | None, str | None]], newest: int, now: float
    ) -> None:
        """Events after the cursor: (id, job, gang, worker now holding the job); ``newest``: the
        largest event id (where a first read starts)."""
        self.watched_at = now
        if self.cursor is None:
            self.cursor = newest
            return
        for event_id, job_id, gang_id, worker_id in events:
            for key in (job_id, gang_id, worker_id):
                if key is not None and self.changed.get(key, 0) < event_id:
                    self.changed[key] = event_id
        end, self.gap_since = advance(self.cursor, (e[0] for e in events), self.gap_since, now)
        if self.gap_since is not None and now - self.gap_since >= GAP_GRACE_S:
            # A gap that stays open is a rolled-back transaction: step over it.
            end, self.gap_since = max((e[0] for e in events), default=end), None
        self.cursor = end
        if len(self.changed) > 200_000:  # bounded: a worker whose key is dropped just looks again
            self.changed.clear()
            self.looks.clear()

    def must_look(self, worker_id: str, running: Iterable[tuple[str, int, str]], now: float) -> bool:
        """Whether the store must be asked for this worker's commands now."""
        look = self.looks.get(worker_id)
        if look is None or self.cursor is None or look.had_commands or now - look.at >= RECHECK_S:
            return True
        reported = frozenset(running)
        if reported != look.running:
            return True
        seen = look.cursor
        changed = self.changed
        if changed.get(worker_id, 0) > seen:
            return True
        for job_id, _, _ in reported:
            # A gang rank's id is <gang>-<rank>: its gang's events count too (an array task's
            # prefix is its array: a look more than needed, never one less).
            if changed.get(job_id, 0) > seen or changed.get(job_id.rpartition("-")[0], 0) > seen:
                return True
        return False

    def looked(
        self,
        worker_id: str,
        running: Iterable[tuple[str, int, str]],
        cursor: int | None,
        had_commands: bool,
        now: float,
    ) -> None:
        """The store was asked for the worker's commands; ``cursor``: the event cursor before it was."""
        if cursor is None:
            return
        self.looks[worker_id] = _Look(cursor, frozenset(running), now, had_commands)

    def forget(self, worker_id: str) -> None:
        """The worker changed (registered, drained, died): its next heartbeat looks."""
        self.looks.pop(worker_id, None)
