"""Leadership of the singleton loops (scheduler, reconciler, outbox relay) among control-plane replicas.

On PostgreSQL the leader holds a session-level advisory lock on a connection of its own: if the
leader dies, even by kill -9, the server ends its session and frees the lock, and another replica's
next try takes it. Correctness never rests on leadership alone (every placement is a guarded
transition, so two leaders for a moment cannot place a job twice); leadership keeps the work from
being done N times. On SQLite there is one replica per database file, and a file lock says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    # psycopg is imported where a PostgreSQL leadership runs: 9 MB a SQLite control plane never needs.
    import psycopg

log = logging.getLogger("trainyard.leader")

# Any fixed 64-bit number: the lock's name in pg_locks (objid) for every Trainyard replica of a database.
ADVISORY_LOCK_KEY = 0x7472_6169_6E79_6172  # "trainyar"


class Leadership(Protocol):
    """Who runs the singleton loops: a lock only one replica holds at a time."""

    def try_acquire(self) -> bool:
        """True while this process is the leader: takes the lead if free, checks it is still held if
        held. Blocking (call it from a thread); never raises."""
        ...

    def release(self) -> None:
        """Give up the lead (on shutdown), so another replica takes it at once."""
        ...


def libpq_url(sqlalchemy_url: str) -> str:
    """The same database as a plain libpq URL (psycopg does not know SQLAlchemy's driver suffix)."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresLeadership:
    """Leadership as a session-level advisory lock on a connection of its own."""

    def __init__(self, url: str, key: int = ADVISORY_LOCK_KEY, timeout_s: float = 3.0) -> None:
        self._url = libpq_url(url)
        self._key = key
        self._timeout = timeout_s
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._held = False
        self._lock = threading.Lock()

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        import psycopg

        conn = psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=max(1, int(self._timeout)),
            application_name="trainyard-leader",
            # Without keepalives a leader cut off by a network partition would believe it still
            # leads until TCP gave up (minutes); the server side frees the lock on its own timeouts.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
        conn.execute(f"SET statement_timeout = {int(self._timeout * 1000)}")
        return conn

    def try_acquire(self) -> bool:
        """Take the lock if free, or check the session holding it is still alive."""
        import psycopg

        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._held = False
                    self._conn = self._connect()
                if self._held:
                    # Still our session? A lost connection means the server has freed the lock.
                    self._conn.execute("SELECT 1")
                    return True
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
                self._held = bool(row and row[0])
                if self._held:
                    log.info("this replica (pid %d) is now the leader", os.getpid())
                return self._held
            except psycopg.Error as e:
                if self._held:
                    log.warning("lost leadership: %s", e)
                self._held = False
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                self._conn = None
                return False

    def release(self) -> None:
        """Close the session, which frees the lock."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()  # ending the session frees the lock
            self._conn = None
            self._held = False


class FileLeadership:
    """SQLite: the database is a local file, so a lock file beside it elects the one replica."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        """Take the lock file if no other process holds it."""
        if self._file is not None:
            return True
        f = open(self._path, "a")  # noqa: SIM115 - held open for the life of the leadership
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        """Close the lock file, which frees the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None


def leadership_for(db_url: str, home: Path) -> Leadership:
    """The leadership that fits the database: an advisory lock on PostgreSQL, a lock file beside a
    SQLite database."""
    if make_url(db_url).get_backend_name() == "postgresql":
        return PostgresLeadership(db_url)
    return FileLeadership(home / "leader.lock")
