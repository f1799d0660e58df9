"""The leader's incremental picture equals a full reread after any sequence of store changes.

Runs on the real SQLite store: each step is one of the moves the platform makes (submit, lease,
start, finish, preempt, cancel, restart, a worker joining, draining or dying, gangs and array tasks,
a dependency released, a checkpoint, time passing past a backoff); after each, the picture brought up
to date with ``scheduling_changes`` alone must say what ``pending_for_scheduling`` and
``running_for_scheduling`` say."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.model.states import AttemptOutcome, JobStatus
from trainyard.server.picture import (
    Picture,
    advance,
    apply,
    full,
    needs_full,
    pending_view,
    running_view,
    with_checkpoints,
)
from trainyard.store.leases import SchedulingRead
from trainyard.store.sql import Conflict, FinishReport, Placement, SqlStore

USERS = (User("alice", "vision", "user"), User("bob", "nlp", "user"))
T0 = 1_750_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _spec(kind: int, prio: str, deps: list[str]) -> JobSpec:
    body: dict[str, Any] = {
        "command": ["true"],
        "priority": prio,
        "retry": {"max_attempts": 3, "backoff": 30, "on": ["infra", "failed"]},
    }
    if kind == 1:
        body["replicas"] = 2
    elif kind == 2:
        body["array"] = {"indices": "0-3", "parallelism": 2}
    if deps:
        body["depends_on"] = [{"job": deps[0], "condition": "finished"}]
    return JobSpec.model_validate(body)


class World:
    """A store and the moves the property test draws from."""

    def __init__(self, store: SqlStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.workers: list[str] = []
        self.jobs: list[str] = []
        self.n_workers = 0

    def worker(self) -> None:
        self.n_workers += 1
        name = f"w{self.n_workers}"
        w, _ = self.store.register_worker(
            name=name,
            hostname=name,
            pool="default",
            region=None,
            cpu=64,
            memory=256 << 30,
            gpu=0,
            gpu_type=None,
            labels={},
            version="t",
        )
        self.workers.append(w.id)

    def step(self, op: int, a: int, b: int) -> list[str]:
        """One move; the ids of jobs changed without an event (the leader passes them on)."""
        s = self.store
        if op == 0 or not self.workers:
            self.worker()
        elif op in (1, 2):
            deps = [self.jobs[a % len(self.jobs)]] if b % 5 == 0 and self.jobs else []
            job = s.submit(USERS[a % 2], _spec(b % 3, ("low", "normal", "high")[a % 3], deps)).job
            self.jobs.append(job.id)
        elif op in (3, 4):
            pending = s.pending_for_scheduling(self.clock())
            if pending:
                row = pending[a % len(pending)]
                wid = self.workers[b % len(self.workers)]
                world = row.replicas
                s.lease(Placement(row.id, wid, (), row.attempt, k, world) for k in range(world))
        elif op in (5, 6, 7, 8):
            running = s.running_for_scheduling()
            if running:
                r = running[a % len(running)]
                assert r.worker_id is not None and r.lease_token is not None
                if op == 5 or (r.status == JobStatus.SCHEDULED.value and b % 2):
                    s.report_started(r.id, r.attempt, r.lease_token, r.worker_id)
                elif op == 8:
                    s.set_checkpoint_times([(r.id, r.attempt, self.clock() - b)])
                else:
                    outcome = (AttemptOutcome.SUCCEEDED, AttemptOutcome.FAILED, AttemptOutcome.PREEMPTED)[
                        b % 3
                    ]
                    code = 0 if outcome is AttemptOutcome.SUCCEEDED else 1
                    s.report_finished(
                        FinishReport(r.id, r.attempt, r.lease_token, r.worker_id, outcome, code)
                    )
        elif op == 9 and self.jobs:
            with contextlib.suppress(Conflict):  # finished already
                s.cancel(self.jobs[a % len(self.jobs)], "alice")
        elif op == 10 and self.jobs:
            with contextlib.suppress(Conflict):  # not finished, or an array
                s.restart(self.jobs[a % len(self.jobs)], "alice")
        elif op == 11:
            s.drain_worker(self.workers[a % len(self.workers)], self.clock() + b)
        elif op == 12:
            s.mark_worker_dead(self.workers[a % len(self.workers)])
        elif op == 13:
            self.clock.now += 1 + b  # past some retry backoffs
        elif op == 14:
            return s.resolve_dependencies().touched
        return []


def _assert_same(picture: Picture, store: SqlStore, now: float) -> None:
    assert pending_view(picture, now) == store.pending_for_scheduling(now)
    assert running_view(picture) == sorted(store.running_for_scheduling(), key=lambda r: r.id)


STEPS = st.lists(
    st.tuples(st.integers(0, 14), st.integers(0, 1000), st.integers(0, 100)), min_size=5, max_size=60
)


# No shrinking: each example builds a database, and a failing one is reported as drawn.
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(steps=STEPS)
def test_incremental_picture_equals_a_full_reread(steps: list[tuple[int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        store = SqlStore(f"sqlite:///{Path(tmp) / 'state.db'}", clock=clock)
        store.migrate()
        try:
            world = World(store, clock)
            world.worker()
            picture = full(store.scheduling_full_read(), clock())
            for op, a, b in steps:
                touched = world.step(op, a, b)
                read = store.scheduling_changes(picture.cursor, touched)
                assert not read.overflow
                picture = apply(picture, read, clock())
                assert picture.gap_since is None  # SQLite commits event ids in order
                if op == 8:  # checkpoints come in without an event: the periodic refresh
                    picture = with_checkpoints(picture, store.checkpoint_times(), clock())
                _assert_same(picture, store, clock())
        finally:
            store.close()


def test_the_picture_rereads_only_what_changed(tmp_path: Path) -> None:
    clock = Clock()
    store = SqlStore(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)
    store.migrate()
    world = World(store, clock)
    world.worker()
    for i in range(20):
        world.step(1, i, 3)  # single jobs
    picture = full(store.scheduling_full_read(), clock())
    assert len(picture.pending) == 20
    read = store.scheduling_changes(picture.cursor)
    assert read.changed == frozenset() and read.pending == [] and read.running == []
    world.step(3, 0, 0)  # one lease
    read = store.scheduling_changes(picture.cursor)
    assert read.changed is not None and len(read.changed) == 1 and len(read.running) == 1
    picture = apply(picture, read, clock())
    _assert_same(picture, store, clock())
    store.close()


def _read(ids: list[int], cursor: int = 0) -> SchedulingRead:
    return SchedulingRead(max(ids, default=cursor), [], [], frozenset(), ids)


@pytest.mark.parametrize(
    ("cursor", "ids", "expected"),
    [
        (0, [], 0),
        (0, [1, 2, 3], 3),
        (5, [6, 8, 9], 6),  # 7 is still in flight: hold at 6
        (5, [7], 5),
        (5, [6, 7, 8], 8),
    ],
)
def test_the_cursor_stops_at_a_gap(cursor: int, ids: list[int], expected: int) -> None:
    end, gap_since = advance(cursor, ids, None, 100.0)
    assert end == expected
    assert (gap_since is None) == (end == max(ids, default=cursor))


@given(st.lists(st.integers(1, 40), unique=True).map(sorted), st.integers(0, 40))
def test_the_cursor_never_passes_an_id_it_has_not_seen(ids: list[int], cursor: int) -> None:
    ids = [i for i in ids if i > cursor]
    end, _ = advance(cursor, ids, None, 0.0)
    assert set(range(cursor + 1, end + 1)) <= set(ids)


def test_a_lasting_gap_and_the_safety_net_ask_for_a_full_reread() -> None:
    p = Picture(cursor=5, full_at=100.0)
    assert needs_full(None, None, 100.0)
    assert not needs_full(p, None, 101.0)
    assert needs_full(p, None, 100.0 + 60.0)  # the periodic safety net
    p = apply(p, _read([7], 5), 101.0)
    assert p.cursor == 5 and p.gap_since == 101.0
    assert not needs_full(p, None, 103.0)  # a transaction still committing
    p = apply(p, _read([7], 5), 103.0)
    assert p.gap_since == 101.0  # the same gap, still open
    assert needs_full(p, None, 106.5)  # for good: a rolled-back transaction
    p = apply(p, _read([6, 7], 5), 104.0)
    assert p.cursor == 7 and p.gap_since is None and not needs_full(p, None, 106.5)
    overflow = SchedulingRead(5, [], [], frozenset(), [], overflow=True)
    assert needs_full(p, overflow, 104.0)
