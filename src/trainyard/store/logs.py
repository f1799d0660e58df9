"""Logs and artifacts: the index of a job's log chunks and artifacts (their bytes are in object
storage). Owns the ``log_chunks`` and ``artifacts`` tables; artifacts are recorded with the report
that ends their attempt (``AttemptRepo.report_finished``)."""

from __future__ import annotations

import sqlalchemy as sa

from trainyard.model.records import ArtifactRecord, LogChunk
from trainyard.store.db import Db
from trainyard.store.logsearch import enqueue_chunk
from trainyard.store.schema import artifacts, job_attempts, log_chunks


def _attempt_token_ok(conn: sa.Connection, job_id: str, attempt: int, token: str) -> bool:
    r = conn.execute(
        sa.select(job_attempts.c.lease_token).where(
            job_attempts.c.job_id == job_id, job_attempts.c.number == attempt
        )
    ).first()
    return r is not None and r.lease_token == token


class LogRepo:
    """Log chunks and artifacts as indexed in the database."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def attempt_token_ok(self, job_id: str, attempt: int, token: str) -> bool:
        """An attempt's own lease token (even after it ended) lets its worker upload that attempt's logs."""
        with self._db.read() as conn:
            return _attempt_token_ok(conn, job_id, attempt, token)

    def add_log_chunk(self, chunk: LogChunk, token: str) -> bool:
        """Index an uploaded log chunk (idempotent by sequence number); False: not that attempt's token."""
        with self._db.tx() as conn:
            return self.add_log_chunk_in(conn, chunk, token)

    def add_log_chunk_in(self, conn: sa.Connection, chunk: LogChunk, token: str) -> bool:
        """``add_log_chunk`` in the caller's transaction (group commit)."""
        if not _attempt_token_ok(conn, chunk.job_id, chunk.attempt, token):
            return False
        exists = conn.execute(
            sa.select(log_chunks.c.seq).where(
                log_chunks.c.job_id == chunk.job_id,
                log_chunks.c.attempt == chunk.attempt,
                log_chunks.c.seq == chunk.seq,
            )
        ).first()
        if exists is None:
            conn.execute(
                log_chunks.insert().values(
                    job_id=chunk.job_id,
                    attempt=chunk.attempt,
                    seq=chunk.seq,
                    start_offset=chunk.start_offset,
                    end_offset=chunk.end_offset,
                    object_key=chunk.object_key,
                    stored_size=chunk.stored_size,
                    created_at=self._db.clock(),
                )
            )
            enqueue_chunk(conn, chunk.job_id, chunk.attempt, chunk.seq, self._db.clock())  # log search
        return True

    def log_chunks(self, job_id: str, attempt: int) -> list[LogChunk]:
        """An attempt's log chunks in byte order."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(log_chunks)
                .where(log_chunks.c.job_id == job_id, log_chunks.c.attempt == attempt)
                .order_by(log_chunks.c.start_offset)
            ).all()
        return [
            LogChunk(r.job_id, r.attempt, r.seq, r.start_offset, r.end_offset, r.object_key, r.stored_size)
            for r in rows
        ]

    def artifacts(self, job_id: str, attempt: int | None = None) -> list[ArtifactRecord]:
        """A job's artifacts (one attempt's, if given), by attempt and path."""
        q = sa.select(artifacts).where(artifacts.c.job_id == job_id)
        if attempt is not None:
            q = q.where(artifacts.c.attempt == attempt)
        with self._db.read() as conn:
            rows = conn.execute(q.order_by(artifacts.c.attempt, artifacts.c.path)).all()
        return [
            ArtifactRecord(r.job_id, r.attempt, r.path, r.size, r.sha256, r.object_key, r.created_at)
            for r in rows
        ]
