"""Heartbeats that change nothing skip the store read of their commands; any event that could give
a worker a command (a cancel, a lease lost, a gang stopped) makes its next heartbeat look again."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.server.plane import ALICE, Plane
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.server.commandgate import RECHECK_S, WATCH_EVERY_S, CommandGate

pytestmark = pytest.mark.anyio


class Mono:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _counting(plane: Plane) -> list[str]:
    calls: list[str] = []
    real = plane.store.worker_commands

    def counted(worker_id: str, running: Any) -> Any:
        calls.append(worker_id)
        return real(worker_id, running)

    plane.store.worker_commands = counted  # type: ignore[method-assign]
    return calls


async def test_quiet_heartbeats_skip_the_store_and_a_cancel_is_seen(plane: Plane) -> None:
    mono = Mono()
    plane.fleet.monotonic = mono
    calls = _counting(plane)
    w = await plane.worker()
    job = await plane.submit()
    (lease,) = plane.schedule()
    await plane.start(lease)
    assert await plane.beat(w) == []
    assert calls == [w.id]  # the first look
    for _ in range(3):
        mono.now += WATCH_EVERY_S
        assert await plane.beat(w) == []
    assert calls == [w.id]  # nothing changed: no store read

    await plane.jobs.cancel(ALICE, job.id)
    mono.now += WATCH_EVERY_S  # the replica reads the events that came in
    assert [c.kind for c in await plane.beat(w)] == [pb.Command.CANCEL]
    assert [c.kind for c in await plane.beat(w)] == [pb.Command.CANCEL]  # repeated until done
    assert len(calls) == 3


async def test_a_lease_lost_elsewhere_tells_its_old_worker_to_kill_it(plane: Plane) -> None:
    mono = Mono()
    plane.fleet.monotonic = mono
    w = await plane.worker()
    await plane.submit()
    (lease,) = plane.schedule()
    await plane.start(lease)
    running = [(lease.job_id, lease.attempt, lease.lease_token)]
    assert await plane.beat(w, running=running) == []
    plane.store.mark_worker_dead(w.id)  # as another replica's reconciler would
    mono.now += WATCH_EVERY_S
    (cmd,) = await plane.beat(w, running=running)
    assert (cmd.kind, cmd.job_id) == (pb.Command.KILL_STALE, lease.job_id)


async def test_the_safety_net_looks_again(plane: Plane) -> None:
    mono = Mono()
    plane.fleet.monotonic = mono
    calls = _counting(plane)
    w = await plane.worker()
    await plane.beat(w)
    mono.now += RECHECK_S
    await plane.beat(w)
    assert calls == [w.id, w.id]


JOBS = st.sampled_from(["j1", "j2", "g1-1", "g1-2", "g2-1"])


@given(
    running=st.frozensets(st.tuples(JOBS, st.just(1), st.just("t")), max_size=3),
    events=st.lists(st.tuples(JOBS, st.sampled_from([None, "w1", "w2"])), max_size=6),
)
def test_an_event_on_what_the_worker_runs_or_holds_makes_it_look(
    running: frozenset[tuple[str, int, str]], events: list[tuple[str, str | None]]
) -> None:
    gate = CommandGate()
    gate.note([], 10, 0.0)
    gate.looked("w1", running, gate.cursor, False, 0.0)
    rows = []
    for i, (job, worker) in enumerate(events, start=11):
        gang = job.partition("-")[0] if "-" in job else None
        rows.append((i, job, gang, worker))
    gate.note(rows, 10 + len(rows), 1.0)
    relevant = any(
        worker == "w1"
        or job in {r[0] for r in running}
        or (gang is not None and gang in {r[0].partition("-")[0] for r in running})
        for _, job, gang, worker in rows
    )
    assert gate.must_look("w1", running, 1.0) == relevant
    gate.looked("w1", running, gate.cursor, False, 1.0)
    assert not gate.must_look("w1", running, 2.0)
    assert gate.must_look("w1", running | {("j9", 1, "t")}, 2.0)  # what it runs changed


def test_the_cursor_waits_at_a_gap_then_steps_over_it() -> None:
    gate = CommandGate()
    gate.note([], 5, 0.0)
    gate.note([(7, "j7", None, "w1")], 7, 1.0)
    assert gate.cursor == 5 and gate.changed["w1"] == 7
    gate.note([(7, "j7", None, "w1")], 7, 3.0)
    assert gate.cursor == 5
    gate.note([(7, "j7", None, "w1")], 7, 7.0)  # 6 never came: a rolled-back transaction
    assert gate.cursor == 7 and gate.gap_since is None
