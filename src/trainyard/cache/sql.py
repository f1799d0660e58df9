"""The cache's fallback on the state store (PostgreSQL or SQLite), for while Redis is unavailable.

Heartbeats go to ``workers.last_heartbeat`` and token buckets to ``rate_buckets``: slower than Redis
but shared by every replica. There is no status cache here: ``get_status`` always misses, so readers
go to the database, which is the truth anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from trainyard.cache.base import NO_FILL, StatusTicket, refill, take_step, unlimited
from trainyard.store.schema import rate_buckets, workers
from trainyard.store.sql import SqlStore

_BEAT = (
    workers.update().where(workers.c.id == sa.bindparam("w_id")).values(last_heartbeat=sa.bindparam("w_at"))
)
_LAST_BEAT = sa.select(workers.c.last_heartbeat).where(workers.c.id == sa.bindparam("w_id"))
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


class SqlCache:
    """``Cache`` on the SQL store. Thread-safe, like the store.

    Heartbeats are only kept for registered workers (rows in ``workers``). The table keeps no
    expiry, so a beat counts as lapsed ``ttl_s`` after it, with the TTL this process last saw for
    that worker, else ``heartbeat_ttl_s``.
    """

    def __init__(
        self, store: SqlStore, *, heartbeat_ttl_s: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._engine = store.engine
        self._clock = clock
        self._default_ttl = heartbeat_ttl_s
        self._ttls: dict[str, float] = {}
        dialect = store.engine.dialect.name
        ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # A new bucket starts full; inserted first so that the row lock below always has a row.
        self._new_bucket = ins(rate_buckets).on_conflict_do_nothing(index_elements=["bucket"])

    def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        self._ttls[worker_id] = ttl_s
        # The store's own transaction: on SQLite it queues behind the store's writers on one lock
        # instead of sleeping in SQLite's busy handler.
        with self._store._tx() as conn:
            conn.execute(_BEAT, {"w_id": worker_id, "w_at": self._clock()})

    def last_heartbeat(self, worker_id: str) -> float | None:
        with self._engine.connect() as conn:
            at = conn.execute(_LAST_BEAT, {"w_id": worker_id}).scalar()
        if at is None or at + self._ttls.get(worker_id, self._default_ttl) <= self._clock():
            return None
        return float(at)

    def take(self, bucket: str, rate_per_s: float, burst: float) -> float:
        if unlimited(rate_per_s, burst):
            return 0.0
        now = self._clock()
        with self._store._tx() as conn:
            conn.execute(self._new_bucket, {"bucket": bucket, "tokens": burst, "updated_at": now})
            held = conn.execute(_BUCKET, {"b": bucket}).one()
            tokens = refill(held.tokens, held.updated_at, now, rate_per_s, burst)
            left, wait = take_step(tokens, rate_per_s, burst)
            # Never move the stamp back: a replica whose clock lags would hand the next caller
            # the lag's worth of tokens again.
            conn.execute(_SET_BUCKET, {"b": bucket, "t": left, "u": max(now, held.updated_at)})
        return wait

    def get_status(self, job_id: str) -> tuple[dict[str, Any] | None, StatusTicket]:
        return None, NO_FILL

    def fill_status(self, job_id: str, view: dict[str, Any], ticket: StatusTicket, ttl_s: float) -> bool:
        return False

    def invalidate_status(self, job_ids: Iterable[str]) -> None:
        return None

    def flush_statuses(self) -> None:
        return None

    def ping(self) -> bool:
        try:
            return self._store.ping()
        except sa.exc.SQLAlchemyError:
            return False
