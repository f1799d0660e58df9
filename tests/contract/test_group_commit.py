"""Group commit with several batches in flight (submissions on PostgreSQL), on every store; and the
pool's ping of connections that rested, on PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from tests.harness import wait_for
from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.server.group_commit import GroupCommit
from trainyard.store import JobFilter
from trainyard.store import db as store_db
from trainyard.store.sql import SqlStore

ALICE = User("alice", "vision", "user")
SPEC = JobSpec(command=("true",), pool="nowhere")


def _submit(store: SqlStore, key: str | None = None) -> Any:
    return lambda conn: store.insert_job_in(conn, ALICE, SPEC, key)


@pytest.mark.parametrize("writers", [1, 4])
def test_concurrent_submissions_each_commit_once(store: SqlStore, writers: int) -> None:
    gate = threading.Event()  # every op waits here, so each batch stays in flight until it opens

    def gated(conn: sa.Connection) -> Any:
        assert gate.wait(60)
        return store.insert_job_in(conn, ALICE, SPEC, None)

    async def main() -> tuple[list[Any], GroupCommit]:
        gc = GroupCommit(store, writers=writers, min_extra_batch=3)
        try:
            tasks = []
            for k in range(1, writers + 1):  # a batch at a time until every writer holds one
                # The first goes at once; a further one once 3 ops wait beside those in flight.
                tasks += [asyncio.create_task(gc.run(gated)) for _ in range(1 if k == 1 else 3)]
                while gc.batches < k:
                    await asyncio.sleep(0.005)
            tasks += [asyncio.create_task(gc.run(gated)) for _ in range(120 - len(tasks))]
            await asyncio.sleep(0.05)
            gate.set()
            return await asyncio.wait_for(asyncio.gather(*tasks), 120), gc
        finally:
            gate.set()
            gc.close()

    jobs, gc = asyncio.run(main())
    ids = {j.id for j in jobs}
    assert len(ids) == 120
    stored, _ = store.list_jobs(JobFilter(), limit=500)
    assert {j.id for j in stored} == ids
    for job_id in list(ids)[:10]:
        assert [e.type for e in store.job_events(job_id)] == ["submitted"]
    # The ops that came while every writer was busy waited and went together, in one batch.
    assert gc.batches == writers + 1
    assert gc.most_in_flight == (0 if writers == 1 else writers)  # one writer applies its own batch


def test_a_few_ops_wait_for_the_batch_in_flight_and_go_together(store: SqlStore) -> None:
    gate = threading.Event()

    def gated(conn: sa.Connection) -> Any:
        assert gate.wait(60)
        return store.insert_job_in(conn, ALICE, SPEC, None)

    async def main() -> tuple[list[Any], GroupCommit, int, int]:
        gc = GroupCommit(store, writers=4, min_extra_batch=3)
        try:
            first = asyncio.create_task(gc.run(gated))
            while gc.batches < 1:
                await asyncio.sleep(0.005)
            few = [asyncio.create_task(gc.run(gated)) for _ in range(2)]
            await asyncio.sleep(0.1)
            waiting = gc.batches  # still 1: two ops are not worth a transaction of their own
            gate.set()
            jobs = await asyncio.wait_for(asyncio.gather(first, *few), 60)
            return jobs, gc, waiting, gc.most_in_flight
        finally:
            gate.set()
            gc.close()

    jobs, gc, waiting, most = asyncio.run(main())
    assert waiting == 1
    assert gc.batches == 2 and most == 1
    assert len({j.id for j in jobs}) == 3


def test_a_key_taken_in_a_concurrent_batch_fails_only_its_own_op(store: SqlStore) -> None:
    async def main() -> list[Any]:
        gc = GroupCommit(store, writers=4)
        try:
            ops = [gc.run(_submit(store, "same-key")) for _ in range(6)]
            ops += [gc.run(_submit(store)) for _ in range(20)]
            return await asyncio.gather(*ops, return_exceptions=True)
        finally:
            gc.close()

    results = asyncio.run(main())
    keyed, plain = results[:6], results[6:]
    assert sum(not isinstance(r, BaseException) for r in keyed) == 1
    assert all(isinstance(r, sa.exc.IntegrityError) for r in keyed if isinstance(r, BaseException))
    assert not any(isinstance(r, BaseException) for r in plain)


def test_writers_must_be_positive(store: SqlStore) -> None:
    with pytest.raises(ValueError):
        GroupCommit(store, writers=0)


def _backend_pid(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_that_died_while_resting_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqlStore(pg_url, pool_size=1, max_overflow=0)
    admin = sa.create_engine(store.url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        pid = _backend_pid(store)  # the pool's one connection, resting in the pool now
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})

            def gone() -> bool:
                q = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p")
                return bool(conn.execute(q, {"p": pid}).scalar_one() == 0)

            wait_for(gone, 30, 0.05, "the backend to exit")
        monkeypatch.setattr(store_db, "PING_IDLE_AFTER_S", 0.0)  # it has rested long enough
        assert store.get_job("no-such-job") is None  # no error: the dead connection was replaced
        assert _backend_pid(store) != pid
    finally:
        admin.dispose()
        store.close()


def test_a_connection_in_steady_use_is_not_pinged(pg_url: str) -> None:
    store = SqlStore(pg_url, pool_size=1, max_overflow=0)
    pings: list[object] = []
    real = store.engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return real(dbapi_connection)

    store.engine.dialect.do_ping = counted  # type: ignore[method-assign]
    try:
        for _ in range(20):
            store.get_job("no-such-job")
        assert pings == []  # each checkout followed the last checkin by far less than a second
    finally:
        store.close()
