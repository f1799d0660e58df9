"""A job's log: sealed, gzipped chunks in object storage (indexed in the store) followed by the
live tail the workers push (memory or Redis). Read in slices, so a 2 GB log is never loaded whole."""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainyard.cache.base import LogTailStore
from trainyard.model.records import Job
from trainyard.model.states import LIVE
from trainyard.objects.base import ObjectNotFound, ObjectStore
from trainyard.server.services.blocking import off_loop

if TYPE_CHECKING:
    from trainyard.store.sql import SqlStore

log = logging.getLogger("trainyard.server")

LOG_SLICE = 4 << 20  # bytes per log read: a 2 GB log is streamed in slices, never loaded whole
_METRIC = b"TRAINYARD_METRIC "


@dataclass(frozen=True)
class LogSlice:
    """Bytes of one attempt's log from ``offset``; ``next_offset``: where the next read starts."""

    attempt: int
    offset: int
    data: bytes
    next_offset: int


class LogService:
    """Reads of job logs, and the live tail's side of the workers' log pushes."""

    def __init__(self, store: SqlStore, objects: ObjectStore, tails: LogTailStore) -> None:
        self.store = store
        self.objects = objects
        self.tails = tails

    def _read_chunks(self, job_id: str, attempt: int, since: int, limit: int) -> tuple[int, bytes]:
        """Sealed bytes from ``since``, about ``limit`` of them at most: (offset, bytes)."""
        out = bytearray()
        start: int | None = None
        for c in self.store.log_chunks(job_id, attempt):
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
        offset, data = await off_loop(self._read_chunks, job.id, number, since, limit)
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
        number = attempt if attempt is not None else job.attempt
        if number <= 0:
            return 0
        chunks = await off_loop(self.store.log_chunks, job.id, number)
        return max([c.end_offset for c in chunks] + [self.tails.end(job.id, number) or 0])

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
