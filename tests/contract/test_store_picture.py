"""The reads behind the leader's picture and the heartbeat's command gate, on SQLite and PostgreSQL:
changes since a cursor bring a picture to what a full reread says; the command events name each
change's job, gang and worker."""

from __future__ import annotations

from tests.contract.test_store import ALICE, finish, lease_one, spec, worker
from trainyard.model.states import AttemptOutcome
from trainyard.server.picture import Picture, apply, full, pending_view, running_view
from trainyard.store.sql import Placement, SqlStore


def _same(store: SqlStore, picture: Picture, now: float) -> None:
    assert pending_view(picture, now) == store.pending_for_scheduling(now)
    assert running_view(picture) == sorted(store.running_for_scheduling(), key=lambda r: r.id)


def test_changes_since_the_cursor_equal_a_full_reread(store: SqlStore) -> None:
    wid = worker(store, cpu=64)
    now = store.db.clock()
    plain = [store.submit(ALICE, spec()).job.id for _ in range(3)]
    picture = full(store.scheduling_full_read(), now)
    _same(store, picture, now)

    gang = store.submit(ALICE, spec(replicas=2)).job
    array = store.submit(ALICE, spec(array={"indices": "0-2", "parallelism": 2})).job
    attempt, token = lease_one(store, plain[0], wid)
    store.report_started(plain[0], attempt, token, wid)
    store.lease(Placement(gang.id, wid, (), 0, k, 2) for k in range(2))
    store.cancel(plain[1], "alice")
    read = store.scheduling_changes(picture.cursor)
    assert read.changed is not None and f"{array.id}-0" in read.changed  # an array's tasks come with it
    picture = apply(picture, read, now)
    _same(store, picture, now)
    assert picture.cursor == read.cursor and picture.gap_since is None

    finish(store, plain[0], attempt, token, wid, AttemptOutcome.SUCCEEDED)
    store.mark_worker_dead(wid)  # the gang's ranks are lost and requeued
    picture = apply(picture, store.scheduling_changes(picture.cursor), now)
    _same(store, picture, now)


def test_command_events_name_the_job_its_gang_and_its_worker(store: SqlStore) -> None:
    wid = worker(store, cpu=64)
    events, newest = store.command_events(None)
    assert events == []
    gang = store.submit(ALICE, spec(replicas=2)).job
    store.lease(Placement(gang.id, wid, (), 0, k, 2) for k in range(2))
    events, last = store.command_events(newest)
    assert last > newest and [e[0] for e in events] == sorted(e[0] for e in events)
    leased = {(job, g, w) for _, job, g, w in events if w is not None}
    assert leased == {(gang.id, gang.id, wid), (f"{gang.id}-1", gang.id, wid)}
    assert store.command_events(last) == ([], last)
