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


def insert_many(conn: sa.Connection, insert: sa.Insert, rows: Sequence[dict[str, Any]]) -> None:
    """``conn.execute(insert, rows)`` for a plain ``table.insert()`` whose rows all have the same
    keys: one statement on PostgreSQL, SQLAlchemy's executemany elsewhere."""
    if not rows or conn.dialect.name != "postgresql" or not isinstance(insert.table, sa.Table):
        conn.execute(insert, rows)
        return
    plan = _plan(insert.table, tuple(rows[0]))
    document = None
    if plan is not None and (not plan[1] or _finite(rows, plan[1])):
        try:
            document = orjson.dumps(rows).decode()
        except TypeError:
            document = None
    if plan is None or document is None:
        conn.execute(insert, rows)
        return
    conn.exec_driver_sql(plan[0], (document,))
