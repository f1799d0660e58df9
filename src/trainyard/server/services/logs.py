"""A job's log: sealed, gzipped chunks in object storage (indexed in the store) followed by the
live tail the workers push (memory or Redis). Read in slices, so a 2 GB log is never loaded whole.

Workers push live bytes only for attempts someone follows (``LogFollow``): a follower asks the
attempt's agent, over its lease stream, to push from its first unsealed byte, and asks again while
it stays connected. Everyone else reads sealed chunks, which lag the job by the agent's seal
interval (5 s by default), so the control plane's log traffic grows with watchers, not with jobs."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from trainyard.cache.base import LogTailStore
from trainyard.model.records import Job, LogChunk
from trainyard.model.states import LIVE
from trainyard.objects.base import ObjectNotFound, ObjectStore
from trainyard.server.services.blocking import off_loop

if TYPE_CHECKING:
    from trainyard.store.ports import LogsStore

log = logging.getLogger("trainyard.server")

LOG_SLICE = 4 << 20  # bytes per log read: a 2 GB log is streamed in slices, never loaded whole
_METRIC = b"TRAINYARD_METRIC "

LOG_TAIL_TTL_S = 10.0
"""How long an agent pushes a followed attempt's live bytes after it was last asked to."""
LOG_TAIL_RESEND_S = 3.0
"""How often a connected follower asks again (between all followers of an attempt, on all
replicas): well within the ttl, so a lost ask or an agent reconnect costs seconds of live tail,
never a byte of the log."""
GLANCE_FOLLOWER = "plain-reads"
"""The one follower every plain (unfollowed) read of an attempt refreshes; it expires with the ttl."""


@dataclass(frozen=True)
class LogSlice:
    """Bytes of one attempt's log from ``offset``; ``next_offset``: where the next read starts."""

    attempt: int
    offset: int
    data: bytes
    next_offset: int


class TailRequests(Protocol):
    """Asks a worker to push (or stop pushing) an attempt's live log: the dispatcher."""

    async def tail(self, worker_id: str, job_id: str, attempt: int, *, stop: bool = False) -> None: ...


class LogFollow:
    """One connected follower's subscription to the live log of the attempt it reads.

    ``watch`` on every turn of the follow loop (it is cheap between asks); ``close`` when the
    follower leaves. The subscription is shared state (``LogTailStore.follow``), so followers on
    every replica ask the agent once per ``LOG_TAIL_RESEND_S`` between them, and the last to leave
    stops it; one that vanishes without closing expires with the ttl."""

    def __init__(self, service: LogService) -> None:
        self._service = service
        self.id = uuid.uuid4().hex
        self._key: tuple[str, int] | None = None
        self._worker: str | None = None
        self._next = 0.0

    async def watch(self, job: Job, attempt: int) -> None:
        """Follow ``attempt`` of ``job`` while it runs on a worker (and nothing otherwise)."""
        worker = job.worker_id if attempt > 0 and LogService.attempt_live(job, attempt) else None
        key = (job.id, attempt) if worker else None
        if key != self._key or worker != self._worker:
            self.close()
        if key is None or worker is None:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._key, self._worker, self._next = key, worker, now + LOG_TAIL_RESEND_S
        svc = self._service
        ask = svc.tails.follow(job.id, attempt, self.id, LOG_TAIL_TTL_S, LOG_TAIL_RESEND_S - 0.5)
        if ask and svc.requests is not None:
            await svc.requests.tail(worker, job.id, attempt)

    def close(self) -> None:
        """The follower left (or moved on to another attempt). Synchronous, so that a cancelled
        response still unsubscribes; the agent's stop goes out in the background."""
        key, worker = self._key, self._worker
        self._key, self._worker, self._next = None, None, 0.0
        if key is None or worker is None:
            return
        svc = self._service
        if svc.tails.unfollow(key[0], key[1], self.id) and svc.requests is not None:
            svc.spawn(svc.requests.tail(worker, key[0], key[1], stop=True))


class LogService:
    """Reads of job logs, and the live tail's side of the workers' log pushes."""

    def __init__(
        self,
        store: LogsStore,
        objects: ObjectStore,
        tails: LogTailStore,
        requests: TailRequests | None = None,
    ) -> None:
        self.store = store
        self.objects = objects
        self.tails = tails
        self.requests = requests
        self._tasks: set[asyncio.Task[None]] = set()
        self.archived_chunks: Callable[[str, int], list[LogChunk]] | None = None
        """An archived job's chunk index, read from its archive (set by the composition root)."""

    def follower(self) -> LogFollow:
        """A subscription for one follower: its attempt's agent pushes live bytes while it lasts."""
        return LogFollow(self)

    async def glance(self, job: Job, attempt: int | None) -> None:
        """A plain read of a running attempt counts as a short follow.

        Someone polling ``GET .../logs`` is watching too: the read asks the agent (at most once per
        ``LOG_TAIL_RESEND_S`` for all readers) to push live bytes for ``LOG_TAIL_TTL_S``, so the
        next poll shows output seconds before the next seal would. A job nobody reads still sends
        nothing through the live path."""
        number = attempt if attempt is not None else job.attempt
        worker = job.worker_id
        if number <= 0 or worker is None or not self.attempt_live(job, number):
            return
        ask = self.tails.follow(job.id, number, GLANCE_FOLLOWER, LOG_TAIL_TTL_S, LOG_TAIL_RESEND_S - 0.5)
        if ask and self.requests is not None:
            await self.requests.tail(worker, job.id, number)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _chunks(self, job_id: str, attempt: int, archived: bool = False) -> list[LogChunk]:
        """An attempt's sealed chunks in byte order; an archived job's from its archive (retention
        deletes the index rows and keeps the chunk objects)."""
        if archived and self.archived_chunks is not None:
            return self.archived_chunks(job_id, attempt)
        return self.store.log_chunks(job_id, attempt)

    def _read_chunks(
        self, job_id: str, attempt: int, since: int, limit: int, archived: bool = False
    ) -> tuple[int, bytes]:
        """Sealed bytes from ``since``, about ``limit`` of them at most: (offset, bytes)."""
        out = bytearray()
        start: int | None = None
        for c in self._chunks(job_id, attempt, archived):
            if c.end_offset <= since:
                continue
            if len(out) >= limit or (start is not None and c.start_offset != start + len(out)):
                break  # enough for one slice, or a hole in the index (the live tail may fill it)
            try:
                raw = gzip.decompress(self.objects.get(c.object_key))
            except (ObjectNotFound, OSError) as e:
                log.warning("log chunk %s unreadable: %s", c.object_key, e)
                break
            lo = max(since, c.start_offset) - c.start_offset
            if start is None:
                start = c.start_offset + lo
            out += raw[lo:]
        return (start if start is not None else since), bytes(out)

    async def read_log(self, job: Job, attempt: int | None, since: int, limit: int = LOG_SLICE) -> LogSlice:
        """One slice of an attempt's log from ``since``: sealed chunks first, then the live tail."""
        number = attempt if attempt is not None else job.attempt
        if number <= 0:
            return LogSlice(0, since, b"", since)
        offset, data = await off_loop(self._read_chunks, job.id, number, since, limit, job.archived)
        pos = offset + len(data)
        if len(data) < limit:
            t_off, t_data = self.tails.read(job.id, number, max(pos, since))
            if t_data:
                if not data:
                    offset = t_off
                elif t_off > pos:
                    data += f"\n[trainyard: {t_off - pos} bytes of log unavailable]\n".encode()
                data += t_data
                pos = t_off + len(t_data)
        return LogSlice(number, offset, data, max(pos, since))

    async def log_end(self, job: Job, attempt: int | None) -> int:
        """How many bytes the attempt's log holds now (sealed or live)."""
        return (await self.log_state(job, attempt))[0]

    async def log_state(self, job: Job, attempt: int | None) -> tuple[int, bool]:
        """(How many bytes the attempt's log holds now, whether the live tail holds bytes past the
        sealed chunks: false while nobody follows a running attempt, whose newest bytes then wait
        for the agent's next seal)."""
        number = attempt if attempt is not None else job.attempt
        if number <= 0:
            return 0, False
        chunks = await off_loop(self._chunks, job.id, number, job.archived)
        sealed = max([c.end_offset for c in chunks] + [0])
        live = self.tails.end(job.id, number) or 0
        return max(sealed, live), live > sealed

    async def tail_lines(self, job: Job, attempt: int | None, lines: int) -> LogSlice:
        """The last ``lines`` lines, read backwards from the end so a huge log is never loaded whole."""
        number = attempt if attempt is not None else job.attempt
        end = await self.log_end(job, number)
        start, data = end, b""
        while start > 0 and data.count(b"\n") <= lines:
            lo = max(0, start - max(LOG_SLICE, len(data)))
            sl = await self.read_log(job, number, lo, limit=start - lo)
            got = sl.data[: max(0, start - sl.offset)]
            if not got:
                break
            data, start = got + data, sl.offset
        body = data[:-1] if data.endswith(b"\n") else data
        cut = len(body)
        for _ in range(lines):
            cut = body.rfind(b"\n", 0, cut)
            if cut < 0:
                break
        first = len(data) if lines == 0 else (0 if cut < 0 else cut + 1)
        return LogSlice(number, start + first, data[first:], end)

    @staticmethod
    def attempt_live(job: Job, attempt: int) -> bool:
        """Whether ``attempt`` is the job's current attempt and still running (or about to)."""
        if attempt != job.attempt:
            return False
        return job.status in LIVE

    async def wait(self, job_id: str, attempt: int, timeout: float, since: int) -> None:
        """Wait up to ``timeout`` for live bytes past ``since`` (or the attempt's end)."""
        await self.tails.wait(job_id, attempt, timeout, since=since)

    async def metric_series(self, job: Job) -> dict[str, list[dict[str, Any]]]:
        """The scalar series the job logged (``TRAINYARD_METRIC {json}`` lines of its latest attempt's
        first log slice), by metric name; malformed lines are skipped."""
        series: dict[str, list[dict[str, Any]]] = {}
        if job.attempt <= 0:
            return series
        sl = await self.read_log(job, None, 0)
        for line in sl.data.splitlines():
            if not line.startswith(_METRIC):
                continue
            try:
                m = json.loads(line[len(_METRIC) :])
                series.setdefault(str(m["name"]), []).append(
                    {"step": m.get("step"), "value": float(m["value"])}
                )
            except (ValueError, KeyError, TypeError):
                continue
        return series

    # ---- the workers' side -----------------------------------------------------------------------
    def append(self, job_id: str, attempt: int, offset: int, data: bytes) -> int:
        """Live bytes a worker pushed at ``offset``; returns the tail's end (what the worker may drop)."""
        return self.tails.append(job_id, attempt, offset, data)

    def mark_ended(self, job_id: str, attempt: int) -> None:
        """The attempt ended: followers stop waiting for more."""
        self.tails.mark_ended(job_id, attempt)
