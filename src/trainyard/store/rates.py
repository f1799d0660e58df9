"""Token buckets in the ``rate_buckets`` table: the rate limits' home while Redis is down.

The arithmetic (refill, take) is the cache's and comes in as a function; this module only keeps the
bucket row consistent across replicas: created full on first use, then read under a row lock and
written back in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from trainyard.store.db import Db
from trainyard.store.schema import rate_buckets

_BUCKET = (
    sa.select(rate_buckets.c.tokens, rate_buckets.c.updated_at)
    .where(rate_buckets.c.bucket == sa.bindparam("b"))
    .with_for_update()  # PostgreSQL: replicas queue on the row; SQLite's writer lock already does
)
_SET_BUCKET = (
    rate_buckets.update()
    .where(rate_buckets.c.bucket == sa.bindparam("b"))
    .values(tokens=sa.bindparam("t"), updated_at=sa.bindparam("u"))
)

Step = Callable[[float, float], tuple[float, float]]
"""(tokens held, stamped at) → (tokens left, seconds to wait): the caller's bucket arithmetic."""


class RateRepo:
    """The ``rate_buckets`` table. Thread-safe."""

    def __init__(self, db: Db) -> None:
        self._db = db
        ins = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
        # A new bucket starts full; inserted first so that the row lock below always has a row.
        self._new_bucket = ins(rate_buckets).on_conflict_do_nothing(index_elements=["bucket"])

    def take_rate_tokens(self, bucket: str, burst: float, now: float, step: Step) -> float:
        """Apply ``step`` to ``bucket`` (created holding ``burst``) at ``now``, store what it leaves,
        and return the wait it says. The stamp never moves back: a replica whose clock lags would
        hand the next caller the lag's worth of tokens again."""
        with self._db.tx() as conn:
            conn.execute(self._new_bucket, {"bucket": bucket, "tokens": burst, "updated_at": now})
            held = conn.execute(_BUCKET, {"b": bucket}).one()
            left, wait = step(held.tokens, held.updated_at)
            conn.execute(_SET_BUCKET, {"b": bucket, "t": left, "u": max(now, held.updated_at)})
        return wait
