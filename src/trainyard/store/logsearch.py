"""Log search: the queue of sealed chunks waiting to be indexed, the indexed lines, and the search.

Owns ``log_index_queue`` and ``log_lines`` (and the full-text index migration 0011 puts over
``log_lines.line``: FTS5 on SQLite, a GIN-indexed tsvector on PostgreSQL). A chunk is queued in the
transaction that records it (``LogRepo.add_log_chunk``); the indexer takes queued chunks with
``pending_chunks``, reads them from object storage, and hands their lines to ``index_chunk``, which
removes the chunk from the queue in the same transaction, so a chunk is indexed once even when two
indexers race.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from trainyard.model.logsearch import IndexedLine, fts5_phrase
from trainyard.store.db import Db
from trainyard.store.schema import log_index_queue, log_lines

_DELETE_BATCH = 500  # ids per IN (...): well under every driver's parameter limit


@dataclass(frozen=True)
class QueuedChunk:
    """A sealed chunk waiting to be indexed; ``at``: when it was sealed (or last deferred)."""

    job_id: str
    attempt: int
    seq: int
    at: float


@dataclass(frozen=True)
class LogHit:
    """One matching line: where it is (job, attempt, byte offset), when its chunk was sealed, whose."""

    id: int
    job_id: str
    attempt: int
    offset: int
    team: str
    at: float
    line: str


@dataclass(frozen=True)
class LogQuery:
    """A search: the phrase's words and the filters. ``visible_team``: the caller's team (None: an
    admin, who sees every team); ``before_id``: the page continues below this index id."""

    words: Sequence[str]
    visible_team: str | None
    team: str | None = None
    job_id: str | None = None
    since: float | None = None
    before_id: int | None = None
    limit: int = 50


def enqueue_chunk(conn: sa.Connection, job_id: str, attempt: int, seq: int, at: float) -> None:
    """Queue a newly recorded chunk for indexing, in the caller's transaction."""
    conn.execute(log_index_queue.insert().values(job_id=job_id, attempt=attempt, seq=seq, enqueued_at=at))


class LogSearchRepo:
    """The log search index."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def pending_chunks(self, limit: int) -> list[QueuedChunk]:
        """Up to ``limit`` queued chunks, oldest first."""
        q = log_index_queue
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(q.c.job_id, q.c.attempt, q.c.seq, q.c.enqueued_at)
                .order_by(q.c.enqueued_at, q.c.job_id, q.c.attempt, q.c.seq)
                .limit(limit)
            ).all()
        return [QueuedChunk(r.job_id, r.attempt, r.seq, r.enqueued_at) for r in rows]

    def defer_chunk(self, chunk: QueuedChunk, now: float) -> None:
        """Put a chunk that could not be read now at the back of the queue, so that it holds up no other."""
        q = log_index_queue
        with self._db.tx() as conn:
            conn.execute(
                q.update()
                .where(q.c.job_id == chunk.job_id, q.c.attempt == chunk.attempt, q.c.seq == chunk.seq)
                .values(enqueued_at=now)
            )

    def index_queue_length(self) -> int:
        """How many chunks wait to be indexed."""
        with self._db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(log_index_queue)).scalar_one())

    def index_chunk(self, chunk: QueuedChunk, team: str, lines: Sequence[IndexedLine]) -> bool:
        """Take ``chunk`` off the queue and index its lines (replacing lines indexed before at the
        same offsets: a neighbour's indexing may have seen only part of a line). False: the chunk
        was no longer queued (another indexer took it), and nothing changed."""
        q = log_index_queue
        with self._db.tx() as conn:
            taken = conn.execute(
                q.delete().where(
                    q.c.job_id == chunk.job_id, q.c.attempt == chunk.attempt, q.c.seq == chunk.seq
                )
            ).rowcount
            if taken != 1:
                return False
            if not lines:
                return True
            offsets = [ln.offset for ln in lines]
            # The chunk's lines start in one range of the log; whatever was indexed in that range
            # before is a part of these lines seen earlier.
            conn.execute(
                log_lines.delete().where(
                    log_lines.c.job_id == chunk.job_id,
                    log_lines.c.attempt == chunk.attempt,
                    log_lines.c.byte_offset.between(min(offsets), max(offsets)),
                )
            )
            conn.execute(
                log_lines.insert(),
                [
                    {
                        "job_id": chunk.job_id,
                        "attempt": chunk.attempt,
                        "byte_offset": ln.offset,
                        "team": team,
                        "at": chunk.at,
                        "line": ln.text,
                    }
                    for ln in lines
                ],
            )
        return True

    def delete_log_index(self, job_ids: Sequence[str]) -> int:
        """Remove the jobs' indexed lines and queued chunks (retention calls this when it archives
        them); returns how many lines went."""
        removed = 0
        ids = list(dict.fromkeys(job_ids))
        for i in range(0, len(ids), _DELETE_BATCH):
            part = ids[i : i + _DELETE_BATCH]
            with self._db.tx() as conn:
                removed += conn.execute(log_lines.delete().where(log_lines.c.job_id.in_(part))).rowcount
                conn.execute(log_index_queue.delete().where(log_index_queue.c.job_id.in_(part)))
        return removed

    def search_logs(self, query: LogQuery) -> list[LogHit]:
        """Lines holding the phrase that the caller may see, newest indexed first (index id order)."""
        ll = log_lines
        cond: list[sa.ColumnElement[bool]] = []
        if query.visible_team is not None:
            cond.append(ll.c.team == query.visible_team)
        if query.team is not None:
            cond.append(ll.c.team == query.team)
        if query.job_id is not None:
            cond.append(ll.c.job_id == query.job_id)
        if query.since is not None:
            cond.append(ll.c.at >= query.since)
        if self._db.dialect == "sqlite":
            # Driven by the FTS5 table: it yields matches by rowid (= log_lines.id) from the newest
            # down, range-limited by the cursor, so a page of a common word stops after its page
            # instead of collecting every match first.
            fts = sa.table("log_lines_fts", sa.column("rowid", sa.Integer))
            if query.before_id is not None:
                cond.append(fts.c.rowid < query.before_id)
            if query.job_id is not None:
                # A job's lines were indexed together: the range of their ids keeps FTS5 from
                # walking every other job's matches.
                of_job = sa.select(sa.func.min(ll.c.id), sa.func.max(ll.c.id)).where(
                    ll.c.job_id == query.job_id
                )
                cond.append(fts.c.rowid >= of_job.with_only_columns(sa.func.min(ll.c.id)).scalar_subquery())
                cond.append(fts.c.rowid <= of_job.with_only_columns(sa.func.max(ll.c.id)).scalar_subquery())
            match = sa.text("log_lines_fts MATCH :phrase").bindparams(phrase=fts5_phrase(list(query.words)))
            stmt = (
                sa.select(ll)
                .select_from(fts.join(ll, ll.c.id == fts.c.rowid))
                .where(match, *cond)
                .order_by(fts.c.rowid.desc())
                .limit(query.limit)
            )
        else:
            if query.before_id is not None:
                cond.append(ll.c.id < query.before_id)
            tsquery = sa.func.phraseto_tsquery(
                sa.literal_column("'simple'::regconfig"), " ".join(query.words)
            )
            stmt = (
                sa.select(ll)
                .where(sa.literal_column("tsv").op("@@")(tsquery), *cond)
                .order_by(ll.c.id.desc())
                .limit(query.limit)
            )
        with self._db.read() as conn:
            rows = conn.execute(stmt).all()
        return [LogHit(r.id, r.job_id, r.attempt, r.byte_offset, r.team, r.at, r.line) for r in rows]
