"""Messages for workers connected to another replica.

A worker keeps its lease stream open to one replica, but the leader's scheduler (or a cancel that
arrived at another replica) may need to reach it. On PostgreSQL the sender NOTIFYs and every replica
LISTENs; the one holding the worker's stream delivers. A lost notification costs latency, not
correctness: heartbeats carry cancels, and a lease stream re-sends every held lease on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from trainyard.server.leader import libpq_url

if TYPE_CHECKING:
    # Imported where PostgreSQL notifications run: a SQLite control plane never loads psycopg.
    import psycopg

log = logging.getLogger("trainyard.notify")
CHANNEL = "trainyard_workers"
_MAX_PAYLOAD = 7000  # PostgreSQL refuses NOTIFY payloads of 8000 bytes or more


@dataclass(frozen=True)
class WorkerNote:
    """Something for a worker whose lease stream may be on another replica: new leases, a
    preemption or a cancel (``kind``) of these (job, attempt) pairs."""

    worker_id: str
    kind: str  # "lease" | "preempt" | "cancel" | "tail" | "untail" (a followed log)
    jobs: tuple[tuple[str, int], ...]


class Notifier(Protocol):
    """Hints between replicas: a note for a worker reaches the replica holding its stream."""

    def send(self, notes: Sequence[WorkerNote]) -> None:
        """Blocking: call from a thread."""
        ...

    def start(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[WorkerNote], None]) -> None:
        """Deliver notes from other replicas by calling ``deliver`` on ``loop``."""
        ...

    def stop(self) -> None:
        """Stop listening and close connections."""
        ...


class LocalNotifier:
    """One replica: every worker is connected here, so there is nobody to tell."""

    def send(self, notes: Sequence[WorkerNote]) -> None:
        """Nothing to do: there is no other replica."""
        return None

    def start(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[WorkerNote], None]) -> None:
        """Nothing to do: there is no other replica."""
        return None

    def stop(self) -> None:
        """Nothing to do."""
        return None


def _payloads(notes: Sequence[WorkerNote]) -> list[str]:
    out: list[str] = []
    for n in notes:
        jobs = list(n.jobs)
        while jobs:
            # Split a long list so that each payload stays under PostgreSQL's limit.
            take = len(jobs)
            while True:
                text = json.dumps({"w": n.worker_id, "k": n.kind, "j": jobs[:take]}, separators=(",", ":"))
                if len(text) <= _MAX_PAYLOAD or take == 1:
                    break
                take = max(1, take // 2)
            out.append(text)
            jobs = jobs[take:]
    return out


class PostgresNotifier:
    """Notes over PostgreSQL's LISTEN/NOTIFY, on the database every replica shares."""

    def __init__(self, url: str) -> None:
        self._url = libpq_url(url)
        self._send_conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, notes: Sequence[WorkerNote]) -> None:
        """NOTIFY the notes (blocking; a failure is logged: heartbeats carry every command too)."""
        import psycopg

        payloads = _payloads(notes)
        if not payloads:
            return
        with self._send_lock:
            for attempt in range(2):
                try:
                    if self._send_conn is None or self._send_conn.closed:
                        self._send_conn = psycopg.connect(self._url, autocommit=True, connect_timeout=3)
                    with self._send_conn.transaction():
                        for p in payloads:
                            self._send_conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, p))
                    return
                except psycopg.Error as e:
                    self._send_conn = None
                    if attempt == 1:
                        log.warning("could not notify other replicas (%s); heartbeats will catch up", e)

    def start(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[WorkerNote], None]) -> None:
        """LISTEN in a thread of its own, reconnecting after errors; notes go to ``deliver``."""
        import psycopg

        def listen() -> None:
            while not self._stop.is_set():
                try:
                    with psycopg.connect(self._url, autocommit=True, connect_timeout=3) as conn:
                        conn.execute(f"LISTEN {CHANNEL}")
                        while not self._stop.is_set():
                            for n in conn.notifies(timeout=0.5):
                                note = _parse(n.payload)
                                if note is not None:
                                    loop.call_soon_threadsafe(deliver, note)
                except psycopg.Error as e:
                    log.warning("replica notifications interrupted (%s); reconnecting", e)
                    self._stop.wait(1.0)
                except RuntimeError:
                    return  # the event loop closed under us: shutting down

        self._thread = threading.Thread(target=listen, name="trainyard-notify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the listening thread and close the sending connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        with self._send_lock:
            if self._send_conn is not None:
                with contextlib.suppress(Exception):
                    self._send_conn.close()
                self._send_conn = None


def _parse(payload: str) -> WorkerNote | None:
    try:
        d = json.loads(payload)
        return WorkerNote(str(d["w"]), str(d["k"]), tuple((str(j), int(a)) for j, a in d["j"]))
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed replica notification: %.200s", payload)
        return None


def notifier_for(db_url: str) -> Notifier:
    """LISTEN/NOTIFY on PostgreSQL; nothing to tell on SQLite (one replica per database)."""
    from sqlalchemy.engine import make_url

    if make_url(db_url).get_backend_name() == "postgresql":
        return PostgresNotifier(db_url)
    return LocalNotifier()
