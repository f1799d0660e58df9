"""The transaction core that every repository of the store shares: the engine, one transaction per
call, and the store's half of group commit (``Db.apply_batch``; the batching itself is the
server's ``GroupCommit``).

A write runs in ``Db.tx``: on SQLite behind this process's writer lock with ``BEGIN IMMEDIATE``, on
PostgreSQL in a pooled connection. The transaction's event and outbox rows are buffered and written
just before commit (``transitions.buffered_events``), and once it has committed, or failed in doubt,
``on_commit`` hears which jobs it changed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url

from trainyard.store import migrate
from trainyard.store.bulk import ends_transaction
from trainyard.store.records import StoreConfig
from trainyard.store.transitions import ROWS_BEFORE_EVENTS, buffered_events

_DEFERRED = "trainyard.deferred_inserts"

OnCommit = Callable[[Sequence[str]], None]
"""Called with the ids of the jobs a transaction changed, once it has committed (or failed in doubt):
the control plane invalidates its status cache there."""


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here; other URLs pass through."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# Every job row carries its spec and every event its data as JSON: orjson encodes and decodes them
# several times faster than the json module, a visible share of a busy control plane.
_JSON = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def _private_sqlite_file(url: str) -> None:
    """The database holds token hashes, sealed secrets and every job: mode 0600, not the umask's
    0644. SQLite gives its -wal and -shm files the main file's mode, so creating that one first is
    enough; files an older version left readable are narrowed."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError:
        return  # no such directory, no permission: SQLite says so when it connects
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with suppress(OSError):
            os.chmod(name, 0o600)


DEFAULT_POOL_SIZE = 10
DEFAULT_POOL_OVERFLOW = 20


def create_engine(url: str, pool_size: int | None = None, max_overflow: int | None = None) -> sa.Engine:
    """The engine for a database URL: a pooled PostgreSQL engine, or SQLite in WAL mode whose
    transactions the store begins itself (see ``Db.tx``). ``pool_size`` and ``max_overflow`` size a
    PostgreSQL pool (the control plane sizes it to the threads that use it); SQLite keeps its own."""
    url = normalize_url(url)
    if not url.startswith("sqlite"):
        pg = sa.create_engine(
            url,
            pool_size=DEFAULT_POOL_SIZE if pool_size is None else pool_size,
            max_overflow=DEFAULT_POOL_OVERFLOW if max_overflow is None else max_overflow,
            **_JSON,
        )
        _ping_idle_connections(pg)
        return pg
    _private_sqlite_file(url)
    engine = sa.create_engine(
        url,
        **_JSON,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=sa.pool.QueuePool,
        pool_size=8,
        max_overflow=16,
    )

    # A pool event: unlike connection events (e.g. "begin"), it does not make SQLAlchemy dispatch
    # events around every statement, which costs ~5 % of a busy control plane.
    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the store issues BEGIN itself (see Db.tx)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


PING_IDLE_AFTER_S = 1.0
"""A pooled PostgreSQL connection idle longer than this is pinged before it is used."""


def _ping_idle_connections(engine: sa.Engine) -> None:
    """Ping a connection only when it comes back from a rest, not on every checkout.

    ``pool_pre_ping`` pinged every checkout: a ``SELECT 1`` round trip before every transaction and
    read: under the submit bench a sixth of the time the database threads waited on PostgreSQL
    was these pings. A connection in steady use is as fresh as the ping would show;
    one that rested (a database restart happens while the pool is quiet, or during an outage that
    failed the calls) is pinged, and a dead one is replaced before anyone uses it. A connection
    that dies while in steady use fails its call once, which invalidates the pool as before."""
    dialect = engine.dialect

    @sa_event.listens_for(engine, "checkin")
    def _rested_from(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa_event.listens_for(engine, "checkout")
    def _ping_if_rested(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_IDLE_AFTER_S:
            return
        try:
            alive = dialect.do_ping(dbapi_conn)
        except Exception:
            alive = False
        if not alive:
            raise sa.exc.DisconnectionError("connection died while idle in the pool")  # the pool reconnects


def insert_later(conn: sa.Connection, insert: sa.Insert, row: dict[str, Any]) -> None:
    """Insert ``row`` now, or, inside ``Db.apply_batch``, together with the batch's other rows of the
    same statement and keys in one executemany after its last op: a batch of submissions would
    otherwise pay a statement (compiled, bound, sent, waited for) per job."""
    deferred: dict[tuple[sa.Insert, tuple[str, ...]], list[dict[str, Any]]] | None = conn.info.get(_DEFERRED)
    if deferred is None:
        conn.execute(insert, row)
    else:
        deferred.setdefault((insert, tuple(row)), []).append(row)


class Db:
    """One database: its engine, clock and policy, and the transactions the repositories run in.
    Thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        config: StoreConfig | None = None,
        on_commit: OnCommit | None = None,
        pool_size: int | None = None,
        max_overflow: int | None = None,
    ) -> None:
        self.url = normalize_url(url)
        self.engine = create_engine(self.url, pool_size, max_overflow)
        self.clock = clock
        self.config = config if config is not None else StoreConfig()
        self.dialect = self.engine.dialect.name
        self.write_lock = threading.Lock() if self.dialect == "sqlite" else None
        """SQLite's writers queue on this lock; None on PostgreSQL, whose rows are locked instead."""
        self.on_commit = on_commit

    def migrate(self) -> None:
        """Bring the schema to the newest migration."""
        migrate.upgrade(self.engine)

    def close(self) -> None:
        """Close the pool's connections."""
        self.engine.dispose()

    def ping(self) -> bool:
        """True when the database answers; raises when it does not."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True

    def changed(self, job_ids: Sequence[str]) -> None:
        """Tell ``on_commit`` that these jobs' views changed without an event row."""
        if self.on_commit is not None:
            self.on_commit(job_ids)

    @contextmanager
    def tx(self) -> Iterator[sa.Connection]:
        """A write transaction, committed when the block ends without an exception."""
        touched: list[str] = []
        try:
            if self.write_lock is None:
                with self.engine.begin() as conn:
                    yield from buffered_events(conn, touched)
                return
            # SQLite has one writer at a time. Queue this process's writers on a lock that wakes the
            # next one at once, instead of SQLite's busy handler, which sleeps in steps of up to 100 ms;
            # and take the write lock up front (IMMEDIATE) so two writers never deadlock on an upgrade.
            with self.write_lock, self.engine.begin() as conn:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                yield from buffered_events(conn, touched)
        finally:
            # After the commit, or after a failure that leaves it in doubt: caches of these jobs
            # must not outlive this transaction.
            if touched and self.on_commit is not None:
                self.on_commit(touched)

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read-only transaction: every statement in it sees one snapshot."""
        with self.engine.begin() as conn:
            if self.write_lock is not None:
                conn.exec_driver_sql("BEGIN")  # one WAL snapshot for every statement of the read
            yield conn

    def apply_batch(self, ops: Sequence[Callable[[sa.Connection], Any]]) -> list[tuple[bool, Any]]:
        """Group commit: run several independent writes in one transaction. Failures are rare (an
        idempotency-key replay), so no savepoint is paid per op: when one op raises, the batch is
        rolled back and each op runs again in a transaction of its own."""
        try:
            with self.tx() as conn:
                deferred: dict[tuple[sa.Insert, tuple[str, ...]], list[dict[str, Any]]] = {}
                conn.info[_DEFERRED] = deferred
                try:
                    results: list[tuple[bool, Any]] = [(True, op(conn)) for op in ops]
                    # Written with the events' rows, which refer to these, in one statement as the
                    # block ends (``buffered_events``). A duplicate key fails the batch there: each
                    # op then runs alone below, inserting at once, and only its own caller hears of it.
                    conn.info[ROWS_BEFORE_EVENTS].extend(
                        (insert, rows) for (insert, _keys), rows in deferred.items()
                    )
                finally:
                    conn.info.pop(_DEFERRED, None)
                # That statement is the transaction's last: where it is all of it (the ops only
                # deferred rows, as plain submissions do), it goes alone, without BEGIN and COMMIT.
                ends_transaction()
                return results
        except sa.exc.OperationalError:
            raise  # the database is unreachable: every op fails alike
        except Exception:  # one op failed: below, each runs alone so the others still commit
            if len(ops) == 1:
                raise
        finally:
            ends_transaction(False)
        out: list[tuple[bool, Any]] = []
        for op in ops:
            try:
                with self.tx() as conn:
                    out.append((True, op(conn)))
            except Exception as e:  # that op's own failure: its caller gets it (GroupCommit raises it)
                out.append((False, e))
        return out
