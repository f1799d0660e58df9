"""A group-commit batch whose ops only defer rows (plain submissions) is one statement on
PostgreSQL, sent in autocommit: no BEGIN, no COMMIT. Everything else keeps its transaction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg._connection_base import BaseConnection

from tests.contract.test_store_bulk import _event, _outbox
from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.store import JobFilter
from trainyard.store.bulk import ends_transaction, insert_together
from trainyard.store.schema import job_events, outbox
from trainyard.store.sql import SqlStore

ALICE = User("alice", "vision", "user")


def spec(**kw: Any) -> JobSpec:
    return JobSpec.model_validate({"command": ["true"], "pool": "nowhere", **kw})


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The commands psycopg sends outside cursors (BEGIN, COMMIT, ROLLBACK), in order."""
    seen: list[bytes] = []
    original = BaseConnection._exec_command

    def spy(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(bytes(command) if isinstance(command, bytes | bytearray) else str(command).encode())
        return original(self, command, *args, **kwargs)

    monkeypatch.setattr(BaseConnection, "_exec_command", spy)
    yield seen


def _statements(store: SqlStore) -> list[str]:
    seen: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def _submit(conn: sa.Connection, store: SqlStore, name: str, key: str | None = None) -> str:
    return store.insert_job_in(conn, ALICE, spec(name=name), key).id


def test_a_batch_of_submissions_is_one_statement_without_begin_or_commit(
    store: SqlStore, commands: list[bytes]
) -> None:
    store.submit(ALICE, spec(name="warm"))  # the team row, and the first connection's setup
    statements = _statements(store)
    commands.clear()
    results = store.apply_batch([lambda c, i=i: _submit(c, store, f"j{i}") for i in range(4)])  # type: ignore[misc]
    sent, began = list(statements), [c.split()[0] for c in commands]
    assert all(ok for ok, _ in results)
    ids = {job_id for _, job_id in results}
    listed, _ = store.list_jobs(JobFilter())
    assert ids <= {j.id for j in listed}
    if store.dialect != "postgresql":
        return
    assert len(sent) == 1 and sent[0].startswith("WITH p0 AS (INSERT")
    assert began == [], began
    # Their events and outbox rows went with them.
    with store.db.read() as conn:
        events = conn.execute(sa.select(job_events.c.job_id).where(job_events.c.job_id.in_(ids))).all()
        assert {e.job_id for e in events} == ids
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one() >= 5


def test_a_batch_that_ran_a_statement_first_keeps_its_transaction(
    store: SqlStore, commands: list[bytes]
) -> None:
    """An op that writes at once (here: a select first, then a duplicate idempotency key) still
    runs in one transaction: the batch rolls back as a whole and each op runs alone."""
    first = store.submit(ALICE, spec(name="first"), "dup").job
    commands.clear()

    def read_then_submit(conn: sa.Connection) -> str:
        conn.execute(sa.text("SELECT 1"))
        return _submit(conn, store, "after-read")

    results = store.apply_batch(
        [read_then_submit, lambda c: _submit(c, store, "dup-again", "dup"), lambda c: _submit(c, store, "x")]
    )
    assert [ok for ok, _ in results] == [True, False, True]
    assert isinstance(results[1][1], sa.exc.IntegrityError)
    listed, _ = store.list_jobs(JobFilter())
    assert {j.id for j in listed} == {first.id, results[0][1], results[2][1]}
    if store.dialect == "postgresql":
        assert b"BEGIN" in [c.split()[0] for c in commands]


def test_a_failing_lone_statement_leaves_nothing_and_the_connection_transactional(store: SqlStore) -> None:
    """A duplicate key fails the statement sent alone; the next transaction on the same pooled
    connections is a transaction again (a failure in it undoes its earlier statements)."""
    kept = store.submit(ALICE, spec(name="kept"), "k").job
    with pytest.raises(sa.exc.IntegrityError):
        store.apply_batch([lambda c: _submit(c, store, "again", "k")])
    with pytest.raises(sa.exc.IntegrityError), store.db.tx() as conn:
        _submit(conn, store, "undone")
        conn.execute(sa.text("SELECT 1"))
        store.insert_job_in(conn, ALICE, spec(name="dup"), "k")
    listed, _ = store.list_jobs(JobFilter())
    assert [j.id for j in listed] == [kept.id]


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[SqlStore]:
    """PostgreSQL's store alone: autocommit is its path, so the next test has no SQLite variant."""
    s = SqlStore(pg_url)
    yield s
    s.close()


def test_only_an_armed_call_goes_alone_and_the_arming_is_spent(
    pg_store: SqlStore, commands: list[bytes]
) -> None:
    """``ends_transaction`` covers the next ``insert_together`` of this thread, and only where nothing
    ran before it in the transaction."""
    store = pg_store

    def parts(prefix: str) -> list[tuple[sa.Insert, list[dict[str, Any]]]]:
        events = [_event(i, f"{prefix}{i}") for i in range(2)]
        return [(job_events.insert(), events), (outbox.insert(), [_outbox(e) for e in events])]

    def sent(prefix: str, arm: bool, first: str | None = None, fail: bool = False) -> list[bytes]:
        commands.clear()
        try:
            with store.db.engine.begin() as conn:
                if first is not None:
                    conn.exec_driver_sql(first)
                if arm:
                    ends_transaction()
                insert_together(conn, parts(prefix))
                if fail:
                    raise KeyError("after the insert")
        except KeyError:
            pass
        return [c.split()[0] for c in commands]

    sent("warm", arm=False)  # the pool's connection and its first-use queries
    assert sent("a", arm=True) == []
    assert sent("b", arm=False) == [b"BEGIN", b"COMMIT"]  # spent by the call before
    assert sent("c", arm=True, first="SELECT 1", fail=True)[:1] == [b"BEGIN"]
    ends_transaction()
    ends_transaction(False)  # taken back
    assert sent("d", arm=False) == [b"BEGIN", b"COMMIT"]
    with store.db.read() as conn:
        stored = {r.job_id[0] for r in conn.execute(sa.select(job_events.c.job_id))}
    assert {"w", "a", "b", "d"} <= stored and "c" not in stored  # the one in a transaction rolled back
