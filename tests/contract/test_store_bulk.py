"""``bulk.insert_many`` stores what SQLAlchemy's executemany stores, on every store: JSON values
(None as JSON null, or SQL NULL where the column says so), floats to the last bit, booleans, NULLs,
row order (the ids of events follow it); a NaN in a nullable float column goes the usual way."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from trainyard.store.bulk import insert_many, insert_together
from trainyard.store.schema import job_events, jobs, outbox
from trainyard.store.sql import SqlStore


def _job(job_id: str, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        id=job_id,
        name=None,
        user_name="alice",
        team="vision",
        status="PENDING",
        priority=2,
        pool="nowhere",
        cpu=1,  # an int in a float column, beside floats in other rows
        memory=2**40,
        gpu=0,
        gpu_type=None,
        max_runtime=0.1 + 0.2,
        preemptible=True,
        replicas=1,
        region=None,
        require_region=False,
        data_uris=None,  # JSON null, not SQL NULL
        spec={"command": ["echo", 'a "quoted" \u00e9 \\ line\n'], "env": {"X": "1"}, "f": 1e-300},
        spec_hash="h" * 64,
        idempotency_key=None,
        created_at=1733491234.123456789,
        updated_at=1733491234.5,
        queued_at=1733491234.25,
        awaiting_dependencies=False,
        gang_abort=None,  # none_as_null: SQL NULL
    )
    row.update(over)
    return row


def _stored(conn: sa.Connection, prefix: str) -> list[dict[str, Any]]:
    cols = [c for c in jobs.c if c.name != "id"]
    got = conn.execute(
        sa.select(
            jobs.c.id,
            *cols,
            sa.cast(jobs.c.data_uris, sa.Text).label("uris_text"),
            sa.cast(jobs.c.gang_abort, sa.Text).label("abort_text"),
        )
        .where(jobs.c.id.like(f"{prefix}%"))
        .order_by(jobs.c.id)
    )
    return [{k: v for k, v in r._mapping.items() if k not in ("id", "idempotency_key")} for r in got]


def test_insert_many_stores_what_executemany_stores(store: SqlStore) -> None:
    variants = [
        {},
        {"cpu": 0.5, "data_uris": ["s3://b/k"], "gang_abort": {"outcome": "x"}, "name": "n"},
        {"preemptible": False, "region": "eu", "memory": 1, "created_at": 5e-324},
    ]
    with store.db.tx() as conn:
        conn.execute(
            jobs.insert(), [_job(f"a{i}", idempotency_key=f"a{i}", **v) for i, v in enumerate(variants)]
        )
        insert_many(
            conn, jobs.insert(), [_job(f"b{i}", idempotency_key=f"b{i}", **v) for i, v in enumerate(variants)]
        )
        old, new = _stored(conn, "a"), _stored(conn, "b")
    assert new == old
    assert old[0]["data_uris"] is None and old[0]["abort_text"] is None
    assert old[0]["created_at"] == 1733491234.123456789


def test_a_lone_row_is_stored_as_execute_stores_it(store: SqlStore) -> None:
    """A batch of one submission writes lone rows: they go through the same document."""
    variants = [
        {},
        {"cpu": 0.5, "data_uris": ["s3://b/k"], "gang_abort": {"outcome": "x"}, "name": "n"},
        {"preemptible": False, "region": "eu", "memory": 1, "created_at": 5e-324},
    ]
    with store.db.tx() as conn:
        for i, v in enumerate(variants):
            conn.execute(jobs.insert(), [_job(f"c{i}", idempotency_key=f"c{i}", **v)])
            insert_many(conn, jobs.insert(), [_job(f"d{i}", idempotency_key=f"d{i}", **v)])
        old, new = _stored(conn, "c"), _stored(conn, "d")
    assert new == old
    assert len(new) == len(variants)
    assert old[0]["data_uris"] is None and old[0]["abort_text"] is None
    assert new[1]["gang_abort"] == {"outcome": "x"} and new[2]["created_at"] == 5e-324


def test_insert_many_keeps_row_order(store: SqlStore) -> None:
    rows = [
        dict(
            event_id=f"e{i}",
            job_id="j",
            team="t",
            type="x",
            from_status=None,
            to_status="PENDING",
            attempt=i,
            at=float(i),
            data={"i": i},
        )
        for i in range(50)
    ]
    with store.db.tx() as conn:
        insert_many(conn, job_events.insert(), rows)
        got = conn.execute(sa.select(job_events.c.attempt, job_events.c.data).order_by(job_events.c.id))
        assert [(r.attempt, r.data) for r in got] == [(i, {"i": i}) for i in range(50)]


def test_a_nan_in_a_nullable_float_column_is_stored_as_executemany_stores_it(store: SqlStore) -> None:
    def started(prefix: str, conn: sa.Connection) -> list[Any]:
        query = sa.select(jobs.c.started_at).where(jobs.c.id.like(f"{prefix}%")).order_by(jobs.c.id)
        return [repr(r.started_at) for r in conn.execute(query)]

    with store.db.tx() as conn:
        conn.execute(jobs.insert(), [_job("m0", started_at=float("nan")), _job("m1", started_at=2.5)])
        insert_many(conn, jobs.insert(), [_job("n0", started_at=float("nan")), _job("n1", started_at=2.5)])
        assert started("n", conn) == started("m", conn)
    if store.dialect == "postgresql":
        assert started_nan(store)


def started_nan(store: SqlStore) -> bool:
    with store.db.read() as conn:
        value = conn.execute(sa.select(jobs.c.started_at).where(jobs.c.id == "n0")).scalar_one()
    return value != value  # NaN, not NULL


def _event(i: int, job_id: str) -> dict[str, Any]:
    return dict(
        event_id=f"{job_id}-e{i}",
        job_id=job_id,
        team="t",
        type="submitted",
        from_status=None,
        to_status="PENDING",
        attempt=0,
        at=1733491234.25 + i,
        data={"user": "alice", "name": None, "i": i},
    )


def _outbox(event: dict[str, Any]) -> dict[str, Any]:
    return dict(
        event_id=event["event_id"],
        topic="job.submitted",
        key=event["job_id"],
        payload={"schema": 1, **event},
        created_at=event["at"],
    )


def _events_and_outbox(conn: sa.Connection, prefix: str) -> tuple[list[Any], list[Any]]:
    events = conn.execute(
        sa.select(job_events).where(job_events.c.job_id.like(f"{prefix}%")).order_by(job_events.c.id)
    ).all()
    rows = conn.execute(sa.select(outbox).where(outbox.c.key.like(f"{prefix}%")).order_by(outbox.c.id)).all()
    return (
        [{str(k): v for k, v in r._mapping.items() if k != "id"} for r in events],
        [{str(k): v for k, v in r._mapping.items() if k != "id"} for r in rows],
    )


def _strip(rows: list[Any], old: str, new: str) -> list[Any]:
    """The rows with the prefix of their ids replaced (to compare rows written under two prefixes)."""
    return [orjson.loads(orjson.dumps(r).replace(old.encode(), new.encode())) for r in rows]


def test_insert_together_stores_what_insert_many_stores(store: SqlStore) -> None:
    """Jobs, events and outbox rows in one statement: the same values, each table's rows in order."""
    variants = [{}, {"cpu": 0.5, "data_uris": ["s3://b/k"], "gang_abort": {"outcome": "x"}}, {"memory": 1}]
    with store.db.tx() as conn:
        for prefix, together in (("p", False), ("q", True)):
            job_rows = [
                _job(f"{prefix}{i}", idempotency_key=f"{prefix}{i}", **v) for i, v in enumerate(variants)
            ]
            events = [_event(i, f"{prefix}{i % 3}") for i in range(7)]
            parts = [
                (jobs.insert(), job_rows),
                (job_events.insert(), events),
                (outbox.insert(), [_outbox(e) for e in events]),
            ]
            if together:
                statements: list[str] = []
                sa.event.listen(conn, "before_cursor_execute", lambda *a, seen=statements: seen.append(a[2]))
                insert_together(conn, parts)
                if store.dialect == "postgresql":
                    assert len(statements) == 1 and statements[0].startswith("WITH p0 AS (INSERT")
            else:
                for insert, rows in parts:
                    insert_many(conn, insert, rows)
        assert _stored(conn, "q") == _stored(conn, "p")
        old, new = _events_and_outbox(conn, "p"), _events_and_outbox(conn, "q")
    assert len(new[0]) == len(new[1]) == 7
    assert [e["data"]["i"] for e in new[0]] == list(range(7))  # the order given
    assert _strip(new[0], "q", "p") == _strip(old[0], "q", "p")
    assert _strip(new[1], "q", "p") == _strip(old[1], "q", "p")


def test_insert_together_with_a_part_that_cannot_go_as_a_document(store: SqlStore) -> None:
    """A NaN in a nullable float column: every part goes the usual way, all of them stored."""
    with store.db.tx() as conn:
        events = [_event(0, "n0")]
        insert_together(
            conn,
            [
                (jobs.insert(), [_job("n0", started_at=float("nan")), _job("n1", started_at=2.5)]),
                (job_events.insert(), events),
                (outbox.insert(), []),  # skipped
                (outbox.insert(), [_outbox(e) for e in events]),
            ],
        )
        got = _events_and_outbox(conn, "n")
        assert conn.execute(sa.select(sa.func.count()).where(jobs.c.id.like("n%"))).scalar_one() == 2
    assert len(got[0]) == len(got[1]) == 1
    if store.dialect == "postgresql":
        assert started_nan(store)


def test_insert_together_fails_as_a_whole_on_a_duplicate_key(store: SqlStore) -> None:
    """A duplicate job id fails the statement: the caller's transaction rolls back, nothing stays."""
    with store.db.tx() as conn:
        insert_many(conn, jobs.insert(), [_job("d0")])
    events = [_event(0, "d1")]
    with pytest.raises(sa.exc.IntegrityError), store.db.tx() as conn:
        insert_together(
            conn,
            [
                (jobs.insert(), [_job("d1", idempotency_key="k1"), _job("d0", idempotency_key="k0")]),
                (job_events.insert(), events),
                (outbox.insert(), [_outbox(e) for e in events]),
            ],
        )
    with store.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(jobs.c.id.like("d%"))).scalar_one() == 1
        assert _events_and_outbox(conn, "d") == ([], [])
