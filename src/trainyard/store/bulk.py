"""Many rows of one INSERT in one statement on PostgreSQL: the rows go as one JSON document,
``INSERT ... SELECT ... FROM json_to_recordset(...)``.

psycopg's executemany sends a statement per row (a pipeline: each row's parameters dumped, its
messages queued and the socket flushed in Python); a group-commit batch of submissions writes three
such statements per job (job, event, outbox), a third of the control plane's CPU under the submit
bench. Arrays per column cost as much again (psycopg dumps lists in Python). One ``orjson.dumps``
of the rows is C, and the SQL text stays the same whatever the number of rows, so psycopg prepares
it once per connection. Rows go in the order given (event and outbox ids follow it, as with
executemany).

What is stored is what SQLAlchemy's executemany stores: JSON columns get the same orjson text
(``None`` is JSON null, or SQL NULL where the column says ``none_as_null``), floats their shortest
round-trip text. A value JSON cannot carry as such (NaN or infinity in a nullable float column, a
type orjson does not know) sends the rows the usual way; SQLite too.

A lone row goes the same way: SQLAlchemy's ``execute`` of one row costs several times the
document's CPU (a batch of one submission, three such rows, cost more CPU than a batch of four)."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa

_Plan = tuple[str, tuple[str, ...]]  # the SQL, and the nullable float columns to check


def _pg_type(column: sa.Column[Any]) -> str | None:
    """The type a column's values are read as from the JSON document (the INSERT then casts them
    as it casts any parameter, e.g. checks a VARCHAR's length); None: a type not mapped here."""
    kind = column.type
    if isinstance(kind, sa.JSON):
        return "json"
    if isinstance(kind, sa.Boolean):
        return "boolean"
    if isinstance(kind, sa.Integer):
        return "bigint"
    if isinstance(kind, sa.Float):
        return "double precision"
    if isinstance(kind, sa.String):
        return "text"
    return None


_plans: dict[tuple[str, tuple[str, ...]], _Plan | None] = {}


def _plan(table: sa.Table, keys: tuple[str, ...]) -> _Plan | None:
    """The statement for rows of ``keys`` into ``table`` (cached); None when a column is not mapped."""
    cache_key = (table.name, keys)
    if cache_key in _plans:
        return _plans[cache_key]
    defs, selected, check = [], [], []
    for key in keys:
        column = table.c.get(key)
        pg = None if column is None else _pg_type(column)
        if column is None or pg is None:
            _plans[cache_key] = None
            return None
        defs.append(f'"{key}" {pg}')
        json_null = pg == "json" and not column.type.none_as_null  # type: ignore[attr-defined]
        # A JSON null comes out of the document as SQL NULL; SQLAlchemy binds None as JSON null.
        selected.append(f"""COALESCE(u."{key}", 'null'::json)""" if json_null else f'u."{key}"')
        if pg == "double precision" and column.nullable:
            check.append(key)  # JSON has no NaN or infinity: orjson writes null
    names = ", ".join(f'"{k}"' for k in keys)
    sql = (
        f'INSERT INTO "{table.name}" ({names}) SELECT {", ".join(selected)} '
        f"FROM json_to_recordset(%s::json) AS u({', '.join(defs)})"
    )
    plan = (sql, tuple(check))
    _plans[cache_key] = plan
    return plan


def _finite(rows: Sequence[dict[str, Any]], keys: tuple[str, ...]) -> bool:
    return all(not isinstance(row[k], float) or math.isfinite(row[k]) for k in keys for row in rows)


def _statement(insert: sa.Insert, rows: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """The SQL and the JSON document that insert ``rows`` on PostgreSQL; None where they cannot go
    as a document (a type not mapped, a value JSON cannot carry)."""
    if not rows or not isinstance(insert.table, sa.Table):
        return None
    plan = _plan(insert.table, tuple(rows[0]))
    if plan is None or (plan[1] and not _finite(rows, plan[1])):
        return None
    try:
        return plan[0], orjson.dumps(rows).decode()
    except TypeError:
        return None


def insert_many(conn: sa.Connection, insert: sa.Insert, rows: Sequence[dict[str, Any]]) -> None:
    """``conn.execute(insert, rows)`` for a plain ``table.insert()`` whose rows all have the same
    keys: one statement on PostgreSQL, SQLAlchemy's executemany elsewhere."""
    _insert(conn, insert, rows, _statement(insert, rows) if conn.dialect.name == "postgresql" else None)


def _insert(
    conn: sa.Connection, insert: sa.Insert, rows: Sequence[dict[str, Any]], statement: tuple[str, str] | None
) -> None:
    """``rows`` by their document ``statement`` where there is one, else by SQLAlchemy's executemany."""
    if statement is None:
        conn.execute(insert, rows)
    else:
        conn.exec_driver_sql(statement[0], (statement[1],))


_thread = threading.local()


def ends_transaction(armed: bool = True) -> None:
    """Say (in this thread) that the next ``insert_together`` is the last statement of its
    transaction, which then commits (``armed`` False: take that back). Where nothing ran in the
    transaction before it, that statement runs on its own in autocommit: it is a transaction by
    itself (all of it or nothing, its commit as durable), and PostgreSQL is spared the BEGIN and the
    COMMIT, each a round trip of its own with psycopg, for two of a group-commit batch's three."""
    _thread.ends = armed


def _idle_psycopg(conn: sa.Connection) -> Any:
    """The psycopg connection under ``conn`` when no transaction has begun on it; else None."""
    dbapi: Any = conn.connection.dbapi_connection
    pgconn = getattr(dbapi, "pgconn", None)
    if pgconn is None or dbapi.autocommit:
        return None
    from psycopg.pq import TransactionStatus

    return dbapi if pgconn.transaction_status == TransactionStatus.IDLE else None


def insert_together(conn: sa.Connection, parts: Sequence[tuple[sa.Insert, Sequence[dict[str, Any]]]]) -> None:
    """``insert_many`` of each part in turn (parts with no rows are skipped), in one statement on
    PostgreSQL: ``WITH p0 AS (INSERT ...), p1 AS (INSERT ...) INSERT ...``, one round trip and one
    execute for what would be one per table. A group-commit batch of submissions writes its jobs,
    events and outbox rows this way: in process, thread CPU of a batch of 4 submissions 0.73 ->
    0.56 ms and its wall time 2.0 -> 1.6 ms (of 1: 0.81 -> 0.59 ms, 3.3 -> 2.7 ms).

    The parts' statements see the same snapshot, so no part may need to read another's rows (plain
    inserts of new rows do not; foreign keys are checked as the statement ends, as they would be
    for separate statements). Each table's rows go in the order given, as with ``insert_many``.
    Where a part cannot go as a document, or off PostgreSQL, each part goes by ``insert_many``.
    After ``ends_transaction``, a statement that is all the transaction runs in autocommit."""
    ends, _thread.ends = getattr(_thread, "ends", False), False
    parts = [(insert, rows) for insert, rows in parts if rows]
    if len(parts) < 2 or conn.dialect.name != "postgresql":
        for insert, rows in parts:
            insert_many(conn, insert, rows)
        return
    statements = [_statement(insert, rows) for insert, rows in parts]
    if any(st is None for st in statements):
        for (insert, rows), statement in zip(parts, statements, strict=True):
            _insert(conn, insert, rows, statement)  # each part's document made once
        return
    sqls = tuple(st[0] for st in statements if st is not None)
    documents = tuple(st[1] for st in statements if st is not None)
    sql = _together.get(sqls)
    if sql is None:
        ctes = ", ".join(f"p{i} AS ({part})" for i, part in enumerate(sqls[:-1]))
        sql = _together[sqls] = f"WITH {ctes} {sqls[-1]}"
    alone = _idle_psycopg(conn) if ends else None
    if alone is None:
        conn.exec_driver_sql(sql, documents)
        return
    # The transaction's commit that follows finds nothing begun and sends nothing.
    alone.autocommit = True
    try:
        conn.exec_driver_sql(sql, documents)
    finally:
        alone.autocommit = False


_together: dict[tuple[str, ...], str] = {}  # the statement of each combination of parts' plans
