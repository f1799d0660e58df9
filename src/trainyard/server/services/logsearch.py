"""Log search: the indexer that reads sealed chunks into the search index, and the search itself.

The indexer runs on the leader, apart from every request: sealing a chunk only queues it (in the
transaction that records the chunk), and ``LogIndexer.index_once`` later reads the queued chunks
from object storage, splits their lines and stores them. The queue is a table, so a restarted or a
new leader carries on with what is left. Chunk bytes are what the worker spooled, secrets already
masked, so the index holds exactly what ``GET /v1/jobs/{id}/logs`` shows.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainyard.model.logsearch import IndexedLine, chunk_lines, decode_cursor, encode_cursor, query_words
from trainyard.model.records import LogChunk, User
from trainyard.objects.base import ObjectNotFound, ObjectStore
from trainyard.server.metrics import Metrics
from trainyard.server.services.blocking import off_loop
from trainyard.server.views import iso
from trainyard.store.logsearch import LogQuery, QueuedChunk

if TYPE_CHECKING:
    from trainyard.store.ports import LogsearchStore

log = logging.getLogger("trainyard.server")

INDEX_BATCH = 32
"""Chunks per indexing step (each up to the worker's chunk size, 1 MiB by default)."""
MAX_SEARCH_LIMIT = 1000


class BadSearch(ValueError):
    """A query, cursor or limit this API cannot run (the route's 422); ``field``: which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class _Readable:
    """The chunks of one attempt, and the bytes read so far (neighbours are shared in a batch)."""

    chunks: list[LogChunk]
    data: dict[int, bytes | None]


class LogIndexer:
    """Moves queued chunks into the search index, a batch per step."""

    def __init__(self, store: LogsearchStore, objects: ObjectStore, metrics: Metrics | None = None) -> None:
        self.store = store
        self.objects = objects
        self.metrics = metrics

    def _read(self, att: _Readable, chunk: LogChunk) -> bytes | None:
        """A chunk's bytes; None when it is gone or damaged (a neighbour then counts as unknown)."""
        if chunk.seq not in att.data:
            try:
                att.data[chunk.seq] = gzip.decompress(self.objects.get(chunk.object_key))
            except (ObjectNotFound, gzip.BadGzipFile, zlib.error, EOFError) as e:
                log.warning("log search: chunk %s unreadable, not indexed: %s", chunk.object_key, e)
                att.data[chunk.seq] = None
        return att.data[chunk.seq]

    def index_once(self, limit: int = INDEX_BATCH) -> int:
        """Index up to ``limit`` queued chunks; how many left the queue (blocking: run off the loop)."""
        store = self.store
        attempts: dict[tuple[str, int], _Readable] = {}
        teams: dict[str, str | None] = {}
        done = 0
        for q in store.pending_log_chunks(limit):
            try:
                if q.job_id not in teams:
                    job = store.get_job(q.job_id)
                    teams[q.job_id] = job.team if job is not None else None
                key = (q.job_id, q.attempt)
                if key not in attempts:
                    attempts[key] = _Readable(store.log_chunks(q.job_id, q.attempt), {})
                lines = self._lines(q, attempts[key])
                # Chunks come mostly in order: only this one (the next one's neighbour) and later
                # ones are worth keeping in memory.
                for seq in [s for s in attempts[key].data if s < q.seq]:
                    del attempts[key].data[seq]
                team = teams[q.job_id]
                # A job that is gone (pruned) or a chunk that cannot be read leaves the queue unindexed.
                kept = lines if team is not None else []
                if store.index_log_chunk(q, team or "", kept):
                    done += 1
                    if self.metrics is not None:
                        self.metrics.log_lines_indexed.inc(len(kept))
            except Exception:
                # Object storage or the database failing now: try this chunk again after the others.
                log.exception("log search: indexing %s/%d/%d failed; deferred", q.job_id, q.attempt, q.seq)
                store.defer_log_chunk(q, store.clock())
        if self.metrics is not None:
            self.metrics.log_index_backlog.set(store.log_index_queue_length())
        return done

    def _lines(self, q: QueuedChunk, att: _Readable) -> list[IndexedLine]:
        by_seq = {c.seq: c for c in att.chunks}
        chunk = by_seq.get(q.seq)
        if chunk is None:
            return []
        data = self._read(att, chunk)
        if data is None:
            return []
        prev = next(
            (c for c in att.chunks if c.end_offset == chunk.start_offset and c.seq != chunk.seq), None
        )
        nxt = next((c for c in att.chunks if c.start_offset == chunk.end_offset and c.seq != chunk.seq), None)
        return chunk_lines(
            chunk.start_offset,
            data,
            self._read(att, prev) if prev is not None and chunk.start_offset > 0 else None,
            self._read(att, nxt) if nxt is not None else None,
        )


class LogSearch:
    """Full-text search over the indexed lines a caller may see."""

    def __init__(self, store: LogsearchStore) -> None:
        self.store = store

    async def search(
        self,
        user: User,
        q: str,
        *,
        team: str | None = None,
        since_s: float | None = None,
        job_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Matching lines, newest indexed first, and the next page's cursor. The caller sees only
        their team's lines (an admin: every team's); another team asked for by name gives no lines,
        as ``GET /v1/jobs?team=`` gives no jobs. BadSearch: no word in ``q``, a foreign cursor."""
        try:
            words = query_words(q)
        except ValueError as e:
            raise BadSearch("q", str(e)) from None
        try:
            before = decode_cursor(cursor) if cursor else None
        except ValueError as e:
            raise BadSearch("cursor", str(e)) from None
        if not 1 <= limit <= MAX_SEARCH_LIMIT:
            raise BadSearch("limit", f"limit must be 1 to {MAX_SEARCH_LIMIT}")
        query = LogQuery(
            words=words,
            visible_team=None if user.is_admin else user.team,
            team=team,
            job_id=job_id,
            since=None if since_s is None else self.store.clock() - since_s,
            before_id=before,
            limit=limit + 1,
        )
        hits = await off_loop(self.store.search_logs, query)
        more = len(hits) > limit
        hits = hits[:limit]
        views = [
            {
                "job_id": h.job_id,
                "attempt": h.attempt,
                "offset": h.offset,
                "team": h.team,
                "time": iso(h.at),
                "line": h.line,
            }
            for h in hits
        ]
        return views, encode_cursor(hits[-1].id) if more and hits else None
